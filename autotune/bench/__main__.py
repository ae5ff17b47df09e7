from autotune.bench.main import main

raise SystemExit(main())

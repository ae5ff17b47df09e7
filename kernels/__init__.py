"""xLSTM math: mLSTM/sLSTM cells, compiled wrappers, the model, weight loading."""

from kernels.compiled import CompileError, cache_info, clear_cache, compiled_block, compiled_step
from kernels.device import DeviceUnavailableError, device_name, resolve_device, synchronize
from kernels.mlstm import EPS, MLSTMState, mlstm_block, mlstm_sequence, mlstm_step, zero_state
from kernels.model import SHAPES, XLSTM, DirectCellRunner, ModelConfig, get_config
from kernels.slstm import SLSTMState, slstm_sequence, slstm_step, slstm_zero_state
from kernels.weights import WeightsError, load_checkpoint, load_official_xlstm, save_checkpoint

__all__ = [
    "CompileError",
    "WeightsError",
    "cache_info",
    "clear_cache",
    "compiled_block",
    "compiled_step",
    "load_checkpoint",
    "load_official_xlstm",
    "save_checkpoint",
    "EPS",
    "SHAPES",
    "XLSTM",
    "DeviceUnavailableError",
    "DirectCellRunner",
    "MLSTMState",
    "ModelConfig",
    "SLSTMState",
    "device_name",
    "get_config",
    "mlstm_block",
    "mlstm_sequence",
    "mlstm_step",
    "resolve_device",
    "slstm_sequence",
    "slstm_step",
    "slstm_zero_state",
    "synchronize",
    "zero_state",
]

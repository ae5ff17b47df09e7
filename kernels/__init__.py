"""xLSTM math: mLSTM/sLSTM cells, compiled wrappers, the model, weight loading."""

from kernels.mlstm import EPS, MLSTMState, mlstm_block, mlstm_sequence, mlstm_step, zero_state

__all__ = ["EPS", "MLSTMState", "mlstm_block", "mlstm_sequence", "mlstm_step", "zero_state"]

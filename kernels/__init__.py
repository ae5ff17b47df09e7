"""xLSTM math: mLSTM/sLSTM cells, compiled wrappers, the model, weight loading."""

from kernels.device import DeviceUnavailableError, device_name, resolve_device, synchronize
from kernels.mlstm import EPS, MLSTMState, mlstm_block, mlstm_sequence, mlstm_step, zero_state
from kernels.model import SHAPES, XLSTM, DirectCellRunner, ModelConfig, get_config
from kernels.slstm import SLSTMState, slstm_sequence, slstm_step, slstm_zero_state

__all__ = [
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

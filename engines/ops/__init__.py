"""Custom ops of satedge: numpy references, ONNX-function forms and the CUDA kernels' loader.

Each op has one numpy reference, an ONNX function of standard operators that ONNX Runtime runs on
a CPU (:mod:`engines.ops.graph`), a CUDA kernel in ``cuda/`` behind a C ABI
(``cuda/include/satedge_kernels.h``, reached through :mod:`engines.ops.cuda_lib`), and, where
TensorRT exists, a plugin. Tests compare every form with the reference.

========================  ==========================================  ============================
module                    op                                          CUDA entry points
========================  ==========================================  ============================
``preprocess``            fused sensor preprocessing (uint16 / 12-bit  ``satedge_preprocess_u16``,
                          DN, calibration, normalisation, tiles)       ``satedge_preprocess_u12packed``
``cloud_fraction``        per-tile cloud fraction of a mask            ``satedge_cloud_fraction``
``rx``                    RX anomaly score, global and local           ``satedge_rx_global``,
                                                                       ``satedge_rx_local``
``nsi``                   RS-DGC neighbourhood-statistics              ``satedge_nsi_score``,
                          sparsification                               ``satedge_nsi_sparsify``
========================  ==========================================  ============================

:mod:`engines.ops.cuda_ops` runs the kernels on numpy arrays (copies in, kernel, copies out) for
hosts with a GPU; elsewhere the references or the ONNX forms give the same results.
:mod:`engines.ops.trt_plugins` turns a model's op nodes into the TensorRT plugins of
``cuda/plugins`` for engine builds. Importing
any module here loads neither onnx, onnxruntime, torch nor a CUDA library.
"""

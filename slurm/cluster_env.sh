# Cluster environment for Litespark jobs: sourced by slurm/pretrain_common.sh before `srun`.
# Every value can be overridden by exporting it before `sbatch` (sbatch passes the environment on).

# --- NCCL over InfiniBand (most H100/H200 clusters) ----------------------------------------------
# Which HCAs and which port NCCL may use; unset lets NCCL pick every IB device it finds.
# export NCCL_IB_HCA=${NCCL_IB_HCA:-mlx5}
# Interface for NCCL's bootstrap and socket fallback: the node's management/Ethernet interface.
# Left unset NCCL picks one, which on hosts with docker0/virbr0 can be the wrong one.
# export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker0}
# GPUDirect RDMA: allow it across the PCIe switch (the default level is conservative on some systems).
# export NCCL_NET_GDR_LEVEL=${NCCL_NET_GDR_LEVEL:-PHB}
export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}   # larger IB retry timeout: fewer spurious failures at scale

# --- AWS EFA instead of InfiniBand (p5 instances): uncomment ---------------------------------------
# export FI_PROVIDER=efa
# export FI_EFA_USE_DEVICE_RDMA=1
# export NCCL_PROTO=simple

# --- NVLink SHARP (multicast) ----------------------------------------------------------------------
# NVLS needs the fabric manager's multicast support; on systems without it NCCL fails at init or hangs.
# Set LITESPARK_NCCL_NVLS=0 to switch it off (the single-host test machines here need that).
if [ "${LITESPARK_NCCL_NVLS:-}" = "0" ]; then export NCCL_NVLS_ENABLE=0; fi

# --- Tensor-parallel overlap -------------------------------------------------------------------
# One hardware queue per device, so that TE/Megatron's communication kernels are issued in the order
# the overlap schedule expects.
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}

# --- Debug switches (off by default: they slow the job or flood the log) -------------------------
if [ "${LITESPARK_DEBUG:-0}" = "1" ]; then
  export NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET   # NCCL topology, transport and ring set-up
  export NVTE_DEBUG=1 NVTE_DEBUG_LEVEL=2               # Transformer Engine: which attention backend runs
  export TORCH_DISTRIBUTED_DEBUG=DETAIL
fi
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

# --- Allocator and threads -----------------------------------------------------------------------
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # one rank per GPU: no CPU oversubscription

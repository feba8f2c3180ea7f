# tests/multidevice needs 8 simulated CPU devices, which XLA fixes when it starts: test_expert_parallel.py runs it
# in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 instead of collecting it here.
collect_ignore = ["multidevice"]

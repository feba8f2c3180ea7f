"""Adapters of third-party MoE router implementations to the spec's API, and their compatibility matrix.

Each module maps one library's routing onto ``(dispatch, combine)``, faithfully (``_base`` says what that
means). ``python -m conformance --impl conformance.adapters.NAME`` checks one; ``python -m conformance.adapters
--report`` checks all and writes the matrix into ``conformance/README.md``. ``tox -e adapters`` installs the
libraries (versions pinned in ``constraints/adapters.txt``) and runs the report.
"""

ADAPTERS = (
    "huggingface_switch",
    "deepspeed_gating",
    "fairscale_top2",
    "soft_moe_pytorch",
    "st_moe_pytorch",
    "praxis_gshard",
)

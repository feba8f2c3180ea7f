"""Golden vectors: fixed inputs and the reference's outputs, replayable by any port without Hypothesis.

``python -m conformance.vectors`` regenerates the files of this folder from ``reference``;
``python -m conformance.vectors --check MODULE`` replays them through MODULE and exits 1 on any failure.
From Python: ``generate(out_dir=None) -> manifest``, ``check(impl, vectors_dir=None) -> list of failures``,
``replay(impl, vectors_dir=None) -> (failures, dtypes of the real outputs)`` and ``load(vectors_dir=None) ->
(manifest, arrays)``.
This package imports ``reference`` (to generate) and the implementation under test (to check). The vectors
themselves need neither Python nor Hypothesis (though importing the ``conformance`` package loads Hypothesis):
a port in another language replays them from ``manifest.json`` and the npz files as described below.

Format (version 1)
------------------
``manifest.json`` holds::

    {"format": "vision-moe-routers golden vectors", "format_version": 1,
     "generated": {"date": "YYYY-MM-DD", "by": ..., "versions": {"python", "numpy", "scipy", "vision-moe-routers"}},
     "tolerances": {"float64": {"rtol", "atol"}, "float32": {...}, "float16": {...}},
     "cases": [case, ...]}

and each case::

    {"name": "route-sinkhorn_expert_choice-f2",   # unique; also the prefix of its array keys
     "function": "route",                         # the API function to call (names as in reference/__init__.py)
     "file": "route.npz",                         # the npz holding its arrays (one file per function)
     "args": [...], "kwargs": {...},              # positional and keyword arguments, encoded as below
     "apply": [[...], ...],                       # only when the function returns a function (mlp_experts)
     "outputs": [{"key": "<name>/dispatch", "compare": "exact"}, {"key": "<name>/combine", "compare": "close"}],
     "seed": 123, "note": "..."}                  # numpy.random.default_rng seed that drew the inputs (null if
                                                  # none) and a remark: provenance only, not needed to replay

An encoded argument is one of:

- a JSON scalar (number, string, null), passed as is. Integers are written without a decimal point and must be
  passed as integers (``k``, ``capacity``, ``num_iters``, ``r``, Token Choice's ``factor``); numbers with a
  decimal point or exponent are floats (``factor=1.5``, ``tol=0.001``);
- ``{"array": KEY}``: the array stored under KEY in the case's npz file;
- ``{"call": FUNCTION, "args": [...]}``: the result of calling the implementation's FUNCTION on the encoded
  args (``moe_layer``'s experts are ``{"call": "mlp_experts", "args": [w1, b1, w2, b2]}``).

To replay a case, decode its args and kwargs, call ``function(*args, **kwargs)``, and if ``apply`` is present
call the returned function with each decoded argument list in turn (``experts(r, inputs)``). The outputs are
the returned values in order: a single value for one output key, else the elements of the returned tuple (or
the results of the ``apply`` calls). Compare each with the array stored under its key:

- ``"exact"`` (dispatch tensors of the sparse routers, capacity): equal, element for element;
- ``"close"`` (everything real): ``|actual - expected| <= atol + rtol * |expected|`` elementwise, with
  ``rtol``, ``atol`` from ``tolerances`` for the dtype your implementation computes in.

The npz files are ordinary NumPy ``.npz`` archives (zip of ``KEY.npy`` entries, NPY format 1.0,
little-endian): inputs and real outputs are float64, capacity is a 0-d int64, losses 0-d float64. Keys are
``"<case name>/<argument or output name>"``. Every input is a multiple of 1/8 or 1/16 of moderate size
(exact in float32), except the dispatch and combine inputs of the ``moe_layer`` cases, which are
``reference.route``'s outputs. Inputs were drawn so that no discrete output depends on a near-tie of a
computed quantity (softmax of computed logits, a Sinkhorn or sparse-OT plan, a stopping test): consecutive
deciding scores are more than 1e-3 apart or exactly equal, so a float32 port must reproduce them exactly.
Ties in scores passed directly to the allocation functions are deliberate and exact; they follow the
lower-index rule of ``reference/README.md`` (choices ``tie-token-choice`` and ``tie-expert-choice``).
"""

from ._store import check as check
from ._store import generate as generate
from ._store import load as load
from ._store import replay as replay

__all__ = ["check", "generate", "load", "replay"]

"""Acting on margin results: Euler attribution tables, the margin-call lifecycle across runs, collateral
transfer plans across venues and deleveraging plans (with the venues' auto-deleveraging ranks).

Layer 4 (docs/architecture.md): it reads ``MarginResult`` tables, plans and the book, and imports only
margin and below. ``attribution`` turns the tail kernels' Euler marginals into ``attribution.parquet``;
``lifecycle`` carries calls from one run to the next through the run folders; ``transfers`` plans
collateral moves (closed form where it is a transport problem, HiGHS LP/MILP otherwise);
``deleverage`` plans reduce-only orders verified by the full model; ``adl`` ranks positions as the
venues' auto-deleveraging queues would.
"""

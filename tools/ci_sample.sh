# Sourced by tools/sanitize.sh and tools/build_wheels.sh: the part of the bad-input grid
# that the runs repeating the test suite (under the sanitizers; on the built wheel with the
# baseline target) keep. .ci/run's main pytest runs the whole grid once; the repeats keep
# the functions whose arrays are read differently: no state (sgd_), two states and
# AMSGrad's third (adam_), the most flags (rmsprop_), the per-tensor trust passes (lamb_)
# and the global norm (adaptive_sgd_). The other functions' cases differ from these in the
# rule's name and coefficients, which the repeats test elsewhere (test_rules, smoke).
# shellcheck disable=SC2034  # used by the scripts that source this file
ci_sample_k="not test_function_bad_input or [sgd_ or [adam_ or [rmsprop_ or [lamb_ or [adaptive_sgd_"

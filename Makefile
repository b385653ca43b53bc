.PHONY: setup run test bench
setup:
	bash scripts/setup.sh
run:
	bash scripts/run_pipeline.sh
test:
	bash scripts/run_tests.sh -q
bench:
	bash scripts/setup.sh && . scripts/env.sh && python benchmarks/curation.py --records 800000

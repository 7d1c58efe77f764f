# Two entry points, both self-installing: `make demo` (the default federated PRANC job)
# and `make test` (the whole suite). Everything lands in .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pranc-fed simulate configs/mnist_lenet.yaml

# Two workers, one test file each at a time (module fixtures such as test_deploy's federation stay on
# one worker): much of the suite waits on processes starting, heartbeats and sockets, not the CPU.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) runs .pytest_cache

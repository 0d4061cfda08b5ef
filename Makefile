VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are pinned here to the releases this machine installs from local disk;
# pyproject.toml keeps broader ranges for users.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test env clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

env: $(VENV)/.installed

demo: env
	$(VENV)/bin/realnet demo

test: env
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) demo_run

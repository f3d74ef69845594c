# Every target installs what it needs into .venv first (once; a second run installs nothing).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
OUT    ?= runs/demo
TASK   ?= sort

.PHONY: venv demo test unit notebooks grade lab exercises release bench clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: venv
	$(PY) -m training demo --task $(TASK) --out $(OUT)

test: venv
	$(PY) -m pytest tests
	$(MAKE) --no-print-directory notebooks

notebooks: venv
	$(PY) -m pytest --nbval notebooks --sanitize-with notebooks/sanitize.cfg

grade: venv
	$(PY) tools/grade.py --impl exercises

lab: venv
	$(VENV)/bin/jupyter lab notebooks

exercises: venv
	$(PY) tools/make_exercises.py

release: venv
	$(PY) tools/release.py dist/student

bench: venv
	$(PY) -m training bench --out runs/bench

clean:
	rm -rf runs dist .pytest_cache

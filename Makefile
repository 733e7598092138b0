# Set-up on a fresh machine: `make run` (train and write runs/latest/submission.csv) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := data/digit-recognizer
PROFILE ?= default

.PHONY: run test install data compile kaggle-submit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Kaggle's files: already here, fetched with the Kaggle CLI when credentials exist, or a message saying how.
data:
	@if [ -f $(DATA)/train.csv ] && [ -f $(DATA)/test.csv ]; then exit 0; fi; \
	if command -v kaggle >/dev/null && { [ -f $$HOME/.kaggle/kaggle.json ] || [ -n "$$KAGGLE_KEY" ]; }; then \
		mkdir -p $(DATA) && kaggle competitions download -c digit-recognizer -p $(DATA) && \
		$(BIN)/python -m zipfile -e $(DATA)/digit-recognizer.zip $(DATA) && rm $(DATA)/digit-recognizer.zip; \
	else \
		echo "error: $(DATA)/train.csv and test.csv are missing. Either put Kaggle's files there"; \
		echo "  (https://www.kaggle.com/competitions/digit-recognizer/data), or install the Kaggle CLI"; \
		echo "  (pip install kaggle), save your API token as ~/.kaggle/kaggle.json"; \
		echo "  (kaggle.com > Settings > Create New Token), accept the competition's rules, and run make run again."; \
		exit 1; \
	fi

run: install data
	$(BIN)/python pipeline.py run --data $(DATA) --profile $(PROFILE)

test: install
	$(BIN)/python -m pytest

compile: install
	$(BIN)/python pipeline.py compile

kaggle-submit:
	@test -f runs/latest/submission.csv || { echo "error: runs/latest/submission.csv not found: run make run first"; exit 1; }
	kaggle competitions submit -c digit-recognizer -f runs/latest/submission.csv -m "$${MESSAGE:-digit-recognizer pipeline $$(readlink runs/latest)}"

clean:
	rm -rf $(VENV) runs digit_recognizer_pipeline.yaml

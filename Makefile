# Shortcuts for dev.py, which does the work (and needs only Python 3.11+).
.PHONY: run test check
run:
	python3 dev.py run
test:
	python3 dev.py test
check:
	python3 dev.py test -q -x

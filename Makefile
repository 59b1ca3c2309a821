# dicomgw — the two commands a new user needs: `make run` and `make test`.
# Everything a target needs is installed by the target itself (into .venv and .tools, both git-ignored).

SHELL := /bin/bash
.DEFAULT_GOAL := help
TOOLS := $(CURDIR)/.tools
UV := $(TOOLS)/uv/bin/uv
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/.venv
export DICOMGW_TOOLS := $(TOOLS)
# pinned versions of the tools built from their Go modules
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
HELM_VERSION := v3.22.0
HELM_DOCS_VERSION := v1.14.2
TOXIPROXY_VERSION := v2.5.0

.PHONY: help install run up down test test-unit fuzz soak lint bench clean tools-minio tools-toxiproxy tools-postgres tools-redis tools-nginx tools-prometheus tools-helm tools-helm-docs tools-kube tools-image tools-keycloak tools-rsyslog tools-dcmtk tools-orthanc tools-browser tools-tesseract

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

install: $(UV)  ## install the Python workspace into .venv
	$(UV) sync --frozen --all-packages --group dev --compile-bytecode
	$(UV_PROJECT_ENVIRONMENT)/bin/python -m compileall -q libs services clients tests bench > /dev/null

run: install  ## serve the embedded gateway at http://127.0.0.1:$${PORT:-8080}/dicom-web
	$(UV_PROJECT_ENVIRONMENT)/bin/dicomgw serve

up: install tools-minio tools-postgres tools-redis tools-nginx  ## start the local distributed stack (router at http://127.0.0.1:8080/dicom-web)
	$(UV_PROJECT_ENVIRONMENT)/bin/dicomgw stack up

down:  ## stop the local distributed stack
	$(UV_PROJECT_ENVIRONMENT)/bin/dicomgw stack down

tools-nginx:  ## install nginx (Debian package), the local router
	bash scripts/apt-install.sh --needs /usr/sbin/nginx --service nginx nginx-light

tools-orthanc:  ## install Orthanc and its DICOMweb plugin (Debian packages), the test PACS
	bash scripts/apt-install.sh --needs Orthanc --needs /usr/share/orthanc/plugins/libOrthancDicomWeb.so --service orthanc orthanc orthanc-dicomweb

tools-tesseract:  ## install Tesseract OCR and the DejaVu fonts (Debian packages): the pixel-cleaning tests' independent OCR and the text they burn in
	bash scripts/apt-install.sh --needs tesseract --needs '/usr/share/tesseract-ocr/*/tessdata/eng.traineddata' --needs /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf --needs /usr/share/fonts/truetype/dejavu/DejaVuSansCondensed.ttf tesseract-ocr tesseract-ocr-eng fonts-dejavu-core fonts-dejavu-extra

tools-rsyslog:  ## install rsyslog (Debian package), the audit syslog receiver of the tests
	bash scripts/apt-install.sh --needs rsyslogd rsyslog

tools-dcmtk:  ## install dcmtk and openssl (Debian packages): a DIMSE peer for the tests, and the TLS certificates they make
	bash scripts/apt-install.sh --needs storescu --needs echoscu --needs openssl dcmtk openssl

tools-helm:  ## build Helm from its Go module into .tools (cached)
	bash scripts/go-install.sh helm helm.sh/helm/v3/cmd/helm $(HELM_VERSION)

tools-helm-docs:  ## build helm-docs (the chart README's parameters table) from its Go module into .tools (cached)
	bash scripts/go-install.sh helm-docs github.com/norwoodj/helm-docs/cmd/helm-docs $(HELM_DOCS_VERSION)

tools-kube:  ## build a Kubernetes control plane (etcd, kube-apiserver, kwok...) from Go modules into .tools/kube (cached; ~8 min once)
	bash scripts/build-kube.sh

tools-prometheus:  ## install Prometheus and promtool (Debian packages)
	bash scripts/apt-install.sh --needs prometheus --needs promtool --service prometheus prometheus

tools-minio:  ## build MinIO from its Go module into .tools (cached)
	bash scripts/go-install.sh minio github.com/minio/minio $(MINIO_VERSION)

tools-toxiproxy:  ## build toxiproxy (the soak's network fault proxy) from its Go module into .tools (cached)
	bash scripts/go-install.sh toxiproxy-server github.com/Shopify/toxiproxy/v2/cmd/server $(TOXIPROXY_VERSION)

tools-postgres:  ## install PostgreSQL server binaries (Debian packages)
	bash scripts/apt-install.sh --needs '/usr/lib/postgresql/*/bin/initdb' --service postgresql postgresql

tools-redis:  ## install Redis server (Debian package)
	bash scripts/apt-install.sh --needs redis-server --service redis-server redis-server

tools-image:  ## build the service images with podman on a debootstrap base into .tools/podman (cached; ~6 min once)
	bash scripts/build-image.sh

tools-keycloak:  ## install Keycloak (the OpenID provider of the login tests) from Maven Central into .tools (cached)
	bash scripts/install-keycloak.sh

tools-browser:  ## install Chromium, playwright-core and the OHIF viewer build into .tools
	bash scripts/install-browser.sh

test: install tools-minio tools-toxiproxy tools-helm tools-helm-docs tools-kube tools-image tools-keycloak tools-rsyslog tools-postgres tools-redis tools-nginx tools-prometheus tools-dcmtk tools-orthanc tools-browser tools-tesseract  ## install everything the suite needs, then run all of it
	$(UV_PROJECT_ENVIRONMENT)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: install  ## only the fast unit tests
	$(UV_PROJECT_ENVIRONMENT)/bin/pytest -q tests/unit

fuzz: install  ## fuzz the multipart reader and the DICOM parser longer than make test does (FUZZ_EXAMPLES, default 20000 each); failing inputs go to tests/fuzz/regressions
	DICOMGW_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-20000} DICOMGW_FUZZ_SAVE=1 $(UV_PROJECT_ENVIRONMENT)/bin/pytest -q -p no:cacheprovider tests/fuzz

soak: install tools-minio tools-toxiproxy tools-postgres tools-redis tools-nginx  ## chaos soak: the local stack under load while faults are injected, then an audit of every acknowledged instance (SOAK_ARGS, default --seconds 300)
	$(UV_PROJECT_ENVIRONMENT)/bin/dicomgw soak $${SOAK_ARGS:---seconds 300}

lint: install  ## ruff and mypy
	$(UV_PROJECT_ENVIRONMENT)/bin/ruff check libs services clients tests bench
	$(UV_PROJECT_ENVIRONMENT)/bin/mypy libs/dicomgw/src
	$(UV_PROJECT_ENVIRONMENT)/bin/mypy --strict clients/dicomgw-client/src

bench: install tools-minio tools-postgres tools-redis tools-nginx tools-orthanc tools-browser  ## every figure against Orthanc and the raw store, embedded and on the stack, and the compact, datasets and pixels figures (bench/run.py; ~40 min)
	$(UV_PROJECT_ENVIRONMENT)/bin/python bench/run.py $(BENCH_ARGS)

clean:  ## remove the data folder and caches (keeps .tools)
	rm -rf var .pytest_cache test-artifacts

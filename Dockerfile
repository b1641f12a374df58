# distpat: every pattern's process from one image (`distpat COMMAND ...`); see deploy/ for the pods.
FROM python:3.11-slim
WORKDIR /opt/distpat
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --system --uid 10001 distpat
USER 10001
ENTRYPOINT ["distpat"]
CMD ["--help"]

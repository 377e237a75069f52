"""Shared pytest fixtures."""

# ---- Real servers on loopback: SeaweedFS (S3) and PostgreSQL ----------------------------------------------
# Defined in tests/fixtures_servers.py; mark the tests that use them with @pytest.mark.integration.
#   seaweed    session: a started SeaweedS3; the AWS_* variables point at it for the session
#   s3_bucket  per test: the name of a fresh bucket, deleted afterwards
#   postgres   session: a started EmbeddedPostgres; use postgres.dsn
from fixtures_servers import postgres, s3_bucket, seaweed  # noqa: F401

# ---- end of real servers ----------------------------------------------------------------------------------

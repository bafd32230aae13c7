//! The store conformance suite against SQLite (a temporary file) and
//! PostgreSQL (a fresh database per case; needs `RUNNEL_TEST_POSTGRES_URL`).

mod sqlite {
    runnel_store::conformance_tests!(runnel_store::conformance::DbHarness::sqlite());
}

mod postgres {
    runnel_store::conformance_tests!(runnel_store::conformance::DbHarness::postgres());
}

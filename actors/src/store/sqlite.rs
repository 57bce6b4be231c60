//! Stub.
pub struct SqliteStore;
impl SqliteStore {
    pub fn open(_p: &std::path::Path) -> super::StoreResult<SqliteStore> {
        unimplemented!()
    }
}

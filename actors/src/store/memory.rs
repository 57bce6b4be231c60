//! Stub.
pub struct MemoryStore;
impl MemoryStore {
    pub fn new() -> MemoryStore {
        unimplemented!()
    }
}

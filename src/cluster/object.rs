//! What the watch loop needs of any object it lists and watches.

use super::Node;

/// What a watch keeps of each object: enough to name it and to resume after it.
pub trait Object: Clone + std::fmt::Debug + Send + 'static {
    /// What a log line of the watch calls them (`nodes`).
    const PLURAL: &'static str;
    /// Its name.
    fn name(&self) -> Option<&str>;
    /// Its resourceVersion.
    fn resource_version(&self) -> Option<&str>;
}

impl Object for Node {
    const PLURAL: &'static str = "nodes";
    fn name(&self) -> Option<&str> {
        self.metadata.name.as_deref()
    }
    fn resource_version(&self) -> Option<&str> {
        self.metadata.resource_version.as_deref()
    }
}

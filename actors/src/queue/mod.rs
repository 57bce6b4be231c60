//! The QueueSupervisor and its WorkerActors.

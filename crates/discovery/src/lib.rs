//! understudy discovery (in progress).

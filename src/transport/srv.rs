//! TEMPORARY stub (not committed): replaced by the SRV helper's module.
#![allow(missing_docs, dead_code)]
use crate::error::{Error, Result};
#[derive(Clone)]
pub struct SrvResolver;
impl SrvResolver {
    pub fn system() -> Result<SrvResolver> {
        Ok(SrvResolver)
    }
    pub fn with_nameservers(_ns: &[std::net::SocketAddr]) -> SrvResolver {
        SrvResolver
    }
    pub async fn lookup(&self, name: &str) -> Result<SrvAnswer> {
        Err(Error::Transport(format!("stub {name}")))
    }
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
    pub addrs: Vec<std::net::SocketAddr>,
}
#[derive(Clone, Debug)]
pub struct SrvAnswer {
    pub targets: Vec<SrvTarget>,
    pub valid_until: std::time::Instant,
}
pub fn parse_srv_url(url: &str) -> Option<&str> {
    url.strip_prefix("srv://")
}

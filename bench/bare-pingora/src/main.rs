//! The floor Portcullis is measured against (`make bench`, issue 14): a Pingora proxy that does
//! only what every proxy must — pick the upstream and rewrite the path — with the gateway's
//! Pingora version, allocator and release profile. What the gateway costs above this is its own.
//!
//! Usage: `bare-pingora LISTEN UPSTREAM PREFIX [THREADS]`, e.g.
//! `bare-pingora 127.0.0.1:8080 127.0.0.1:9000 /public 2`: `/public/x` is forwarded as `/x`.

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::*;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Forwards every request to one backend, with `prefix` removed from the path.
struct Bare {
    upstream: String,
    prefix: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _: &mut Session,
        req: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        // The same rewrite as the gateway's `strip_prefix` and nginx's `proxy_pass …/`.
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Some(rest) = path.strip_prefix(self.prefix.as_str()) {
            let rest = if rest.starts_with('/') { rest } else { "/" };
            let uri = rest
                .parse()
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "path", e))?;
            req.set_uri(uri);
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: bare-pingora LISTEN UPSTREAM PREFIX [THREADS]");
        std::process::exit(2);
    }
    let threads = match args.get(4).map(|t| t.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("bare-pingora: THREADS must be a positive number");
            std::process::exit(2);
        }
    };
    let conf = pingora::server::configuration::ServerConf {
        threads,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream: args[2].clone(),
            prefix: args[3].clone(),
        },
    );
    proxy.add_tcp(&args[1]);
    server.add_service(proxy);
    server.run_forever();
}

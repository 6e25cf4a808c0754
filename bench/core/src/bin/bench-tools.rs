//! Token streams and signed requests for `scripts/bench.py`, made with the
//! same libraries the filter and `appguard-cli mint` use, but thousands at a
//! time (one process instead of one per token).
//!
//! ```text
//! bench-tools mint --alg ES256|RS256 --key-pem FILE --kid KID --count N
//!     --lifetime SECS --iss ISS --aud AUD --sub SUB      # one token per line
//! bench-tools ipk --seed-hex HEX                           # the install key's ipk
//! bench-tools sign --seed-hex HEX --count N --method M --scheme S
//!     --authority A --path P --body B --token-header H --token T --created UNIX
//!     # one line per request: signature-input \t signature \t content-digest
//! ```

use std::collections::HashMap;

use appguard::signing::{
    default_covered_components, sign_request, InstallSigningKey, Message, SignatureOptions,
};
use jwt_simple::prelude::*;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        fail("usage: bench-tools mint|ipk|sign ...");
    };
    let opts = parse_opts(&args[1..]);
    let get = |k: &str| -> String {
        opts.get(k)
            .cloned()
            .unwrap_or_else(|| fail(&format!("--{k} is required")))
    };
    match cmd.as_str() {
        "mint" => {
            let count: usize = get("count").parse().unwrap_or_else(|_| fail("--count"));
            let lifetime: u64 = get("lifetime")
                .parse()
                .unwrap_or_else(|_| fail("--lifetime"));
            let pem =
                std::fs::read_to_string(get("key-pem")).unwrap_or_else(|e| fail(&e.to_string()));
            let kid = get("kid");
            let claims = |i: usize| {
                Claims::create(Duration::from_secs(lifetime))
                    .with_issuer(get("iss"))
                    .with_audience(get("aud"))
                    .with_subject(get("sub"))
                    .with_jwt_id(format!("bench-{i}-{}", std::process::id()))
            };
            // One signer per algorithm; the loop is the same for all.
            let err = |e: jwt_simple::Error| -> ! { fail(&e.to_string()) };
            let sign: Box<dyn Fn(usize) -> String> = match get("alg").as_str() {
                "ES256" => {
                    let kp = ES256KeyPair::from_pem(&pem)
                        .unwrap_or_else(|e| err(e))
                        .with_key_id(&kid);
                    Box::new(move |i| kp.sign(claims(i)).unwrap_or_else(|e| err(e)))
                }
                "RS256" => {
                    let kp = RS256KeyPair::from_pem(&pem)
                        .unwrap_or_else(|e| err(e))
                        .with_key_id(&kid);
                    Box::new(move |i| kp.sign(claims(i)).unwrap_or_else(|e| err(e)))
                }
                "PS256" => {
                    let kp = PS256KeyPair::from_pem(&pem)
                        .unwrap_or_else(|e| err(e))
                        .with_key_id(&kid);
                    Box::new(move |i| kp.sign(claims(i)).unwrap_or_else(|e| err(e)))
                }
                other => fail(&format!("unsupported --alg {other}")),
            };
            let mut out = String::new();
            for i in 0..count {
                out.push_str(&sign(i));
                out.push('\n');
            }
            print!("{out}");
        }
        "ipk" => {
            let key = install_key(&get("seed-hex"));
            println!("{}", key.public_key().to_ipk());
        }
        "sign" => {
            let key = install_key(&get("seed-hex"));
            let count: usize = get("count").parse().unwrap_or_else(|_| fail("--count"));
            let created: u64 = get("created").parse().unwrap_or_else(|_| fail("--created"));
            let (method, scheme, authority, path) =
                (get("method"), get("scheme"), get("authority"), get("path"));
            let body = get("body");
            let token_header = get("token-header").to_ascii_lowercase();
            let headers = vec![
                (token_header.clone(), get("token")),
                ("content-type".to_owned(), "application/json".to_owned()),
                ("content-length".to_owned(), body.len().to_string()),
            ];
            let message = Message::request(
                &method,
                &scheme,
                &authority,
                &path,
                None,
                &headers,
                Some(body.as_bytes()),
            );
            let components = default_covered_components(&message, &token_header);
            let mut out = String::new();
            for i in 0..count {
                let mut options = SignatureOptions::new("install", components.clone(), created);
                options.nonce = Some(format!("n{i}"));
                let h = sign_request(&key, &message, &options)
                    .unwrap_or_else(|e| fail(&format!("sign: {e}")));
                out.push_str(&format!(
                    "{}\t{}\t{}\n",
                    h.signature_input,
                    h.signature,
                    h.content_digest.unwrap_or_default()
                ));
            }
            print!("{out}");
        }
        other => fail(&format!("unknown command {other}")),
    }
}

fn install_key(seed_hex: &str) -> InstallSigningKey {
    let bytes: Vec<u8> = (0..seed_hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(seed_hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    InstallSigningKey::p256_from_bytes(&bytes)
        .unwrap_or_else(|e| fail(&format!("install key: {e}")))
}

fn parse_opts(args: &[String]) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(k) = a.strip_prefix("--") else {
            fail(&format!("unexpected argument {a}"));
        };
        let v = it
            .next()
            .cloned()
            .unwrap_or_else(|| fail(&format!("--{k} needs a value")));
        m.insert(k.to_owned(), v);
    }
    m
}

fn fail(msg: &str) -> ! {
    eprintln!("bench-tools: {msg}");
    std::process::exit(2);
}

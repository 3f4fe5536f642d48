use std::collections::BTreeMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn blocks_arguments_quotes_and_comments_parse() {
    let config = parse(
        "events { }\n# a comment { ;\nstream {\n  server { listen 8443; proxy_pass \"est.example:8443\"; }\n}\nhttp { map $a $b { default 'x y'; } }",
    )
    .unwrap();
    let names: Vec<&str> = config.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["events", "stream", "http"]);
    assert_eq!(config[0].block, Some(vec![]));
    let server = config[1].children("server").next().unwrap();
    let pass = server.children("proxy_pass").next().unwrap();
    assert_eq!(pass.args, ["est.example:8443"]);
    assert_eq!(pass.block, None);
    let map = config[2].children("map").next().unwrap();
    assert_eq!(map.args, ["$a", "$b"]);
    assert_eq!(map.block.as_ref().unwrap()[0].args, ["x y"]);
}

#[test]
fn a_variable_in_braces_is_one_word() {
    let config = parse("server { listen ${NGINX_DEFAULT_PORT} ssl; }").unwrap();
    let listen = config[0].children("listen").next().unwrap();
    assert_eq!(listen.args, ["${NGINX_DEFAULT_PORT}", "ssl"]);
}

#[test]
fn broken_configurations_say_where() {
    assert_eq!(
        parse("stream { server { }").unwrap_err(),
        "the \"stream\" block is not closed"
    );
    assert_eq!(parse("}").unwrap_err(), "a '}' closes no block");
    assert_eq!(
        parse("server { listen 1 }").unwrap_err(),
        "\"listen 1\" is not ended by ';'"
    );
    assert_eq!(
        parse("listen 1").unwrap_err(),
        "\"listen 1\" is not ended by ';'"
    );
    assert_eq!(
        parse("{ }").unwrap_err(),
        "a ';' or '{' follows no directive"
    );
    assert_eq!(
        parse("x \"open;").unwrap_err(),
        "a quoted string is not closed"
    );
}

#[test]
fn substitution_follows_the_proxy_variable_list() {
    let text =
        "listen ${NGINX_DEFAULT_PORT}; pass ${EST}; keep ${host} ${DOCKER_REQUEST_ROUTE_ADDRESS}";
    // The default list: listed variables get their value, their default or "0"; others stay.
    assert_eq!(
        substitute(text, &env(&[("EST", "x")])),
        "listen 443; pass ${EST}; keep ${host} 0"
    );
    assert_eq!(
        substitute(text, &env(&[("NGINX_DEFAULT_PORT", "8000")])),
        "listen 8000; pass ${EST}; keep ${host} 0"
    );
    // A list of its own replaces the default one.
    assert_eq!(
        substitute(
            text,
            &env(&[
                (VARIABLE_LIST_ENV, "EST,NGINX_DEFAULT_PORT"),
                ("EST", "est:8443")
            ])
        ),
        "listen 443; pass est:8443; keep ${host} ${DOCKER_REQUEST_ROUTE_ADDRESS}"
    );
    // The proxy splits the list on ',' alone: a name with a space matches nothing.
    assert_eq!(
        substitute(
            "${EST}",
            &env(&[(VARIABLE_LIST_ENV, "NGINX_DEFAULT_PORT, EST"), ("EST", "x")])
        ),
        "${EST}"
    );
    // One level of indirection: a value naming another variable takes that one's value.
    assert_eq!(
        substitute(
            "${EST}",
            &env(&[
                (VARIABLE_LIST_ENV, "EST"),
                ("EST", "EST_TARGET"),
                ("EST_TARGET", "est:8443")
            ])
        ),
        "est:8443"
    );
    assert_eq!(substitute("tail ${open", &env(&[])), "tail ${open");
}

#[test]
fn listen_ports() {
    for (arg, port) in [
        ("8443", Some(8443)),
        ("0.0.0.0:8443", Some(8443)),
        ("*:8443", Some(8443)),
        ("[::]:8443", Some(8443)),
        ("localhost", None),
        ("[::1]", None),
        ("${EST_PORT}", None),
        ("70000", None),
    ] {
        assert_eq!(listen_port(arg), port, "{arg}");
    }
}

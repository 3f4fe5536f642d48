//! `merge-config.awk`: how `install.sh` merges the bundle's `config.toml` into the device's
//! `/etc/aziot/config.toml` instead of replacing it, so a user's proxy (`[agent.env]`), PKCS#11
//! (`[aziot_keys]`), `[[principal]]` and other settings survive a bundle install.
//!
//! Why awk: it is on every device IoT Edge runs on (POSIX requires it; busybox, mawk and gawk all
//! run this program), while python3 is missing on EFLOW and Yocto images and has no TOML writer
//! in its standard library, and neither `iotedge` nor `aziotctl` can merge configurations. The
//! program is a TOML lexer (basic, literal and multi-line strings, arrays and inline tables over
//! several lines, comments), not a line matcher; `tests/config_merge.rs` checks its output with a
//! real TOML parser.
//!
//! Rules: every key the bundle sets wins; the tables and keys in [`OPERATOR_OWNED`] belong to the
//! operator whole (a key the user put there, or an older bundle left there, is dropped); every
//! other key, table and comment of the installed file stays where it was. Merging the same bundle
//! again yields the same bytes.

/// File name of the merge program inside the bundle.
pub const MERGE_PROGRAM_FILE: &str = "merge-config.awk";

/// Keys and tables (with their sub-tables) the operator owns whole: the device's identity and
/// how it is provisioned, its edge CA and how it is issued, the agent's registry login, and the
/// parent. A stale key there would change what aziot does (a leftover `connection_string` beside
/// X.509 provisioning, a parent on a device that moved to the top layer).
pub const OPERATOR_OWNED: &[&str] = &[
    "parent_hostname",
    "provisioning",
    "edge_ca",
    "agent.config.auth",
    "cert_issuance.est",
];

/// First line of a merged `config.toml`; also how the merge recognises its own comment.
pub const MERGED_MARKER: &str = "# Keys from the edge-hierarchy-operator bundle merged in by install.sh; your other keys and tables are kept.";

/// The awk program (`awk -f merge-config.awk BUNDLE_CONFIG INSTALLED_CONFIG > MERGED`).
pub fn render_merge_program() -> String {
    PROGRAM
        .replace("@OWNED@", &OPERATOR_OWNED.join(" "))
        .replace(
            "@MARKER@",
            &MERGED_MARKER.replace('\\', "\\\\").replace('"', "\\\""),
        )
}

const PROGRAM: &str = r##"# merge-config.awk, written by edge-hierarchy-operator; install.sh runs it as
#     awk -f merge-config.awk BUNDLE_CONFIG INSTALLED_CONFIG > MERGED
# Keys of BUNDLE_CONFIG win; the keys and tables listed in "owned" are the bundle's whole; every
# other key, table and comment of INSTALLED_CONFIG is kept in place. Exits 2 on input that is
# not TOML, naming the file and line.
BEGIN {
    nowned = split("@OWNED@", owned, " ")
    marker = "@MARKER@"
    file = 0
}

FILENAME != current {
    finish_file()
    current = FILENAME
    file++
    table = ""
    line_no = 0
}

{
    line_no++
    sub(/\r$/, "")
    if (pending == "") {
        pending = $0
        start_line = line_no
    } else {
        pending = pending "\n" $0
    }
    scan($0)
    if (mode == 0 && depth <= 0) {
        add(pending)
        pending = ""
        depth = 0
    }
}

END {
    if (failed) exit 2
    finish_file()
    emit()
}

function fail(why) {
    printf "merge-config.awk: %s line %d: %s\n", current, start_line, why > "/dev/stderr"
    failed = 1
    exit 2
}

function finish_file() {
    if (pending != "") {
        fail("unterminated string, array or inline table")
    }
}

# Follows strings, brackets and comments through one line.
function scan(line,    i, n, c) {
    n = length(line)
    for (i = 1; i <= n; i++) {
        c = substr(line, i, 1)
        if (mode == 1) {
            if (c == "\\") i++
            else if (c == "\"") mode = 0
        } else if (mode == 2) {
            if (c == "\047") mode = 0
        } else if (mode == 3) {
            if (c == "\\") i++
            else if (substr(line, i, 3) == "\"\"\"") { mode = 0; i += 2 }
        } else if (mode == 4) {
            if (substr(line, i, 3) == "\047\047\047") { mode = 0; i += 2 }
        } else if (c == "#") {
            break
        } else if (substr(line, i, 3) == "\"\"\"") { mode = 3; i += 2 }
        else if (substr(line, i, 3) == "\047\047\047") { mode = 4; i += 2 }
        else if (c == "\"") mode = 1
        else if (c == "\047") mode = 2
        else if (c == "[" || c == "{") depth++
        else if (c == "]" || c == "}") depth--
    }
    if (mode == 1 || mode == 2) fail("unterminated string")
}

function trim(s) {
    sub(/^[ \t]+/, "", s)
    sub(/[ \t]+$/, "", s)
    return s
}

# A key or table name without the blanks outside quotes, so `a . b` and `a.b` compare equal.
function squeeze(s,    out, i, c, q) {
    out = ""
    q = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (q != "") {
            out = out c
            if (c == q) q = ""
        } else if (c == "\"" || c == "\047") {
            q = c
            out = out c
        } else if (c != " " && c != "\t") {
            out = out c
        }
    }
    return out
}

# The key of a `key = value` line: what comes before the first `=` outside quotes.
function key_of(s,    i, c, q) {
    q = ""
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (q != "") {
            if (c == q) q = ""
        } else if (c == "\"" || c == "\047") {
            q = c
        } else if (c == "=") {
            return squeeze(substr(s, 1, i - 1))
        }
    }
    return ""
}

function header_name(s,    end) {
    end = index(s, "]")
    if (end == 0) fail("a table header without ]")
    return squeeze(substr(s, 1, end - 1))
}

function is_owned(path,    i) {
    for (i = 1; i <= nowned; i++) {
        if (path == owned[i] || index(path, owned[i] ".") == 1) return 1
    }
    return 0
}

# Whether the bundle sets this path, or a table or key below it (a user's inline table there).
function bundle_sets(path,    p) {
    if (path in bundle_key || path in bundle_table) return 1
    for (p in bundle_key) if (index(p, path ".") == 1) return 1
    for (p in bundle_table) if (index(p, path ".") == 1) return 1
    return 0
}

function add(text,    first, kind, name, key, n) {
    first = text
    sub(/\n.*/, "", first)
    first = trim(first)
    if (first == "") kind = "blank"
    else if (first ~ /^#/) kind = "comment"
    else if (first ~ /^\[\[/) {
        kind = "header"
        table = header_name(substr(first, 3)) "[]"
    } else if (first ~ /^\[/) {
        kind = "header"
        table = header_name(substr(first, 2))
    } else {
        kind = "key"
        key = key_of(first)
        if (key == "") fail("neither a key = value line, a table header nor a comment")
        name = (table == "" ? key : table "." key)
    }
    if (file == 1) {
        if (kind == "header") {
            bundle_table[table] = 1
            bundle_order[++bundle_tables] = table
        } else if (kind == "key") {
            bundle_key[name] = 1
            bundle_body[table] = bundle_body[table] text "\n"
        }
        return
    }
    if (kind == "comment" && first == marker) return
    n = ++count
    kinds[n] = kind
    texts[n] = text
    tables[n] = table
    paths[n] = name
}

# Trivia (comments, blank lines) without blank lines at either end.
function tidy(s) {
    sub(/^\n+/, "", s)
    sub(/\n+$/, "", s)
    return s
}

function put(s) {
    if (s != "") printf "%s\n", s
}

# One table of the installed file, statements from..to (`from` is its header, 0 for the top).
function emit_block(from, to, t,    i, last, kept) {
    last = from
    for (i = from + 1; i <= to; i++) if (kinds[i] == "key") last = i
    if (t != "" && is_owned(t)) {
        for (i = last + 1; i <= to; i++) carried = carried "\n" texts[i]
        return
    }
    if (t != "") {
        put(tidy(carried))
        carried = ""
        put(texts[from])
    }
    kept = ""
    for (i = from + 1; i <= last; i++) {
        if (kinds[i] == "key" && (is_owned(paths[i]) || bundle_sets(paths[i]))) continue
        kept = kept "\n" texts[i]
    }
    put(tidy(kept))
    if (t == "" || t in bundle_table) {
        printf "%s", bundle_body[t]
        done[t] = 1
    }
    for (i = last + 1; i <= to; i++) carried = carried "\n" texts[i]
    print ""
}

function emit_bundle_table(t) {
    put(tidy(carried))
    carried = ""
    printf "[%s]\n%s\n", t, bundle_body[t]
    done[t] = 1
}

function emit(    i, start, t) {
    print marker
    start = 0
    t = ""
    for (i = 1; i <= count; i++) {
        if (kinds[i] != "header") continue
        emit_block(start, i - 1, t)
        start = i
        t = tables[i]
    }
    emit_block(start, count, t)
    # Tables the installed file lacks: the shared ones first, then the owned ones, which a
    # second merge also writes last, so merging again yields the same bytes.
    for (i = 1; i <= bundle_tables; i++) {
        t = bundle_order[i]
        if (!(t in done) && !is_owned(t)) emit_bundle_table(t)
    }
    for (i = 1; i <= bundle_tables; i++) {
        t = bundle_order[i]
        if (!(t in done)) emit_bundle_table(t)
    }
    put(tidy(carried))
}
"##;

//! Building IoT Hub query expressions: one quoting rule and one way to split long `IN [...]`
//! lists, so no query the operator sends breaks the hub's grammar or its length limit.

/// Longest query expression IoT Hub accepts, in characters ("IoT Hub query language": a query
/// string can be at most 8 KB).
pub const MAX_QUERY_LENGTH: usize = 8_192;

/// Most rows IoT Hub returns in one page of a query (`x-ms-max-item-count`, default 100). The
/// query quota counts requests, and each page is one, so the operator asks for full pages: a
/// resync of 1,000 devices reads them in one page instead of ten.
pub const MAX_QUERY_PAGE_SIZE: u32 = 1_000;

/// Most ids in one `IN [...]` list, whatever their length: as many as one page answers.
pub const MAX_IDS_PER_LIST: usize = MAX_QUERY_PAGE_SIZE as usize;

/// A string literal of the query language: single quotes, an embedded `'` doubled (the only
/// escape the language has; a backslash is an ordinary character).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `{head}[{ids as literals}]{tail}` for every id, split into as few queries as the length limit
/// and [`MAX_IDS_PER_LIST`] allow. An id too long to fit even alone is sent on its own (the hub
/// then says what it thinks of it; a device id is at most 128 characters, so this cannot happen
/// with a valid id and a short head).
pub fn in_list_queries<'a>(
    head: &str,
    ids: impl IntoIterator<Item = &'a str>,
    tail: &str,
) -> Vec<String> {
    let fixed = head.len() + tail.len() + 2;
    let mut queries = Vec::new();
    let mut list: Vec<String> = Vec::new();
    let mut length = fixed;
    let finish = |list: &mut Vec<String>, queries: &mut Vec<String>| {
        if !list.is_empty() {
            queries.push(format!("{head}[{}]{tail}", list.join(", ")));
            list.clear();
        }
    };
    for id in ids {
        let item = literal(id);
        let added = item.len() + if list.is_empty() { 0 } else { 2 };
        if !list.is_empty() && (length + added > MAX_QUERY_LENGTH || list.len() == MAX_IDS_PER_LIST)
        {
            finish(&mut list, &mut queries);
            length = fixed;
        }
        length += item.len() + if list.is_empty() { 0 } else { 2 };
        list.push(item);
    }
    finish(&mut list, &mut queries);
    queries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled_and_backslashes_kept() {
        assert_eq!(literal("plain"), "'plain'");
        assert_eq!(literal("a'b"), "'a''b'");
        assert_eq!(literal("it's'"), "'it''s'''");
        assert_eq!(literal("back\\slash"), "'back\\slash'");
    }

    #[test]
    fn in_lists_are_split_by_count_and_by_length() {
        // Ids short enough that a full list stays under the length limit: split by count.
        let ids: Vec<String> = (0..2_500).map(|i| format!("{}", i % 10)).collect();
        let queries = in_list_queries("x IN ", ids.iter().map(String::as_str), "");
        assert_eq!(queries.len(), 3);
        assert!(queries[0].starts_with("x IN ['0', '1'"));
        let counts: Vec<usize> = queries
            .iter()
            .map(|q| q.matches(", ").count() + 1)
            .collect();
        assert_eq!(counts, [MAX_IDS_PER_LIST, MAX_IDS_PER_LIST, 500]);

        // 100 ids of 128 characters would need about 13,200 characters: split by length.
        let long: Vec<String> = (0..100).map(|i| format!("{i:0>128}")).collect();
        let head =
            "SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent' AND deviceId IN ";
        let queries = in_list_queries(head, long.iter().map(String::as_str), "");
        assert!(queries.len() >= 2);
        for q in &queries {
            assert!(q.len() <= MAX_QUERY_LENGTH, "{} characters", q.len());
        }
        let listed: usize = queries.iter().map(|q| q.matches("', '").count() + 1).sum();
        assert_eq!(listed, 100, "every id is in exactly one query");

        assert!(in_list_queries(head, std::iter::empty(), "").is_empty());
        assert_eq!(
            in_list_queries("x IN ", ["a'b"], " AND y"),
            ["x IN ['a''b'] AND y"]
        );
    }
}

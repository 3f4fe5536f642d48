//! Status conditions: built fresh each reconcile, merged with the previous ones so that
//! `lastTransitionTime` changes only when a condition's status changes (kstatus and `kubectl wait`
//! rely on that).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as the reconciler decides it, without timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionUpdate {
    pub type_: &'static str,
    pub status: Status,
    pub reason: String,
    pub message: String,
}

/// Condition status values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    pub fn from_bool(value: bool) -> Self {
        if value { Status::True } else { Status::False }
    }
}

impl ConditionUpdate {
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Merges `updates` into `previous`: a condition whose status is unchanged keeps its
/// `lastTransitionTime`; conditions of other types are kept as they are (another field manager
/// may own them). The result is sorted by type for stable output.
pub fn merge_conditions(
    previous: &[Condition],
    updates: &[ConditionUpdate],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !updates.iter().any(|u| u.type_ == c.type_))
        .cloned()
        .collect();
    for update in updates {
        let old = previous.iter().find(|c| c.type_ == update.type_);
        let last_transition_time = match old {
            Some(old) if old.status == update.status.as_str() => old.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: update.type_.to_string(),
            status: update.status.as_str().to_string(),
            reason: update.reason.clone(),
            message: truncate(&update.message, 32 * 1024),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The first `shown` items joined, then a count of the rest, so messages stay readable for big
/// fleets.
pub fn summarize(items: &[String], shown: usize) -> String {
    if items.len() <= shown {
        items.join(", ")
    } else {
        format!(
            "{} and {} more",
            items[..shown].join(", "),
            items.len() - shown
        )
    }
}

/// Cuts a message to at most `max` bytes on a character boundary (the apiserver caps messages).
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_changes_only_on_status_change() {
        let first = merge_conditions(
            &[],
            &[ConditionUpdate::new(
                "Ready",
                Status::Unknown,
                "Progressing",
                "starting",
            )],
            Some(1),
            &time(100),
        );
        assert_eq!(first[0].last_transition_time, time(100));
        assert_eq!(first[0].observed_generation, Some(1));

        let same = merge_conditions(
            &first,
            &[ConditionUpdate::new(
                "Ready",
                Status::Unknown,
                "Progressing",
                "still going",
            )],
            Some(2),
            &time(200),
        );
        assert_eq!(
            same[0].last_transition_time,
            time(100),
            "same status keeps the time"
        );
        assert_eq!(same[0].message, "still going");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge_conditions(
            &same,
            &[ConditionUpdate::new(
                "Ready",
                Status::True,
                "Reconciled",
                "ok",
            )],
            Some(2),
            &time(300),
        );
        assert_eq!(flipped[0].last_transition_time, time(300));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn conditions_of_other_types_are_kept_and_output_is_sorted() {
        let foreign = merge_conditions(
            &[],
            &[ConditionUpdate::new("Zeta", Status::True, "X", "")],
            None,
            &time(1),
        );
        let merged = merge_conditions(
            &foreign,
            &[
                ConditionUpdate::new("Stalled", Status::False, "Reconciled", ""),
                ConditionUpdate::new("Ready", Status::True, "Reconciled", ""),
            ],
            Some(1),
            &time(2),
        );
        let types: Vec<&str> = merged.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Stalled", "Zeta"]);
    }

    #[test]
    fn long_lists_show_the_first_items_and_a_count() {
        let items: Vec<String> = (1..=7).map(|i| format!("d{i}")).collect();
        assert_eq!(summarize(&items[..3], 5), "d1, d2, d3");
        assert_eq!(summarize(&items, 5), "d1, d2, d3, d4, d5 and 2 more");
        assert_eq!(summarize(&items, 10), "d1, d2, d3, d4, d5, d6, d7");
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let text = "ä".repeat(100);
        let cut = truncate(&text, 51);
        assert!(cut.len() <= 51 && cut.ends_with("..."));
        assert_eq!(truncate("short", 51), "short");
    }
}

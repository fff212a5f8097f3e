//! `spec.rules` at the door: the controller compiles a resource's extraction rules with the
//! worker's own compiler when its spec changes, reports the outcome in the `RulesValid`
//! condition, and does not place a resource whose rules cannot compile (its `Assigned`
//! condition and a Warning Event say why, naming the rule and the part).

use std::fmt::Write as _;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{
    CONDITION_ASSIGNED, CONDITION_RULES_VALID, CrawlerResource, CrawlerResourceStatus, Phase,
};

use super::{
    PlanEvent, Reason,
    status::{set_assigned_condition, set_unassigned, stop_note},
};

/// Problems shown in a condition message before "and N more".
const SHOWN_PROBLEMS: usize = 8;

/// What the controller knows about a resource's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RulesCheck {
    /// No `spec.rules`: no `RulesValid` condition either.
    None,
    /// Every rule compiles.
    Valid,
    /// The message for people: every problem (up to [`SHOWN_PROBLEMS`]) and what to do.
    Invalid(String),
}

/// Compiles `resource`'s rules; `previous` (the check of an earlier version) is reused while
/// the spec's generation is the same, so status-only updates compile nothing.
pub(super) fn check(
    resource: &CrawlerResource,
    previous: Option<(Option<i64>, &RulesCheck)>,
) -> RulesCheck {
    if let Some((generation, check)) = previous
        && generation.is_some()
        && generation == resource.metadata.generation
    {
        return check.clone();
    }
    if resource.spec.rules.is_empty() {
        return RulesCheck::None;
    }
    match crate::rules::check(&resource.spec) {
        Ok(()) => RulesCheck::Valid,
        Err(err) => {
            let mut message = String::from("spec.rules cannot be compiled: ");
            let shown: Vec<String> = err
                .problems
                .iter()
                .take(SHOWN_PROBLEMS)
                .map(ToString::to_string)
                .collect();
            message.push_str(&shown.join("; "));
            if err.problems.len() > SHOWN_PROBLEMS {
                let _ = write!(
                    message,
                    "; and {} more",
                    err.problems.len() - SHOWN_PROBLEMS
                );
            }
            message.push_str(
                ". Fix the rule with kubectl edit or apply; the task starts once its rules compile",
            );
            RulesCheck::Invalid(message)
        }
    }
}

/// A resource whose rules cannot compile is placed nowhere (unassigned from its worker, which
/// stops the task): `Unschedulable`, its `Assigned` condition saying why, and a Warning Event
/// when the message is new.
pub(super) fn keep_off_workers(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    (reason, message): (Reason, &str),
    now: Timestamp,
) -> Option<PlanEvent> {
    set_unassigned(desired, Phase::Unschedulable);
    set_assigned_condition(desired, current, false, reason, message, now);
    current
        .condition(CONDITION_ASSIGNED)
        .is_none_or(|c| c.message != message)
        .then(|| PlanEvent {
            warning: true,
            reason,
            note: stop_note(current, message),
        })
}

/// Sets (or, without rules, removes) the `RulesValid` condition; `lastTransitionTime` moves
/// only when its status flips.
pub(super) fn set_rules_condition(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    check: &RulesCheck,
    now: Timestamp,
) {
    desired
        .conditions
        .retain(|c| c.type_ != CONDITION_RULES_VALID);
    let (status, reason, message) = match check {
        RulesCheck::None => return,
        RulesCheck::Valid => ("True", Reason::RulesCompiled, "every rule compiles"),
        RulesCheck::Invalid(message) => ("False", Reason::InvalidRules, message.as_str()),
    };
    let last_transition_time = current
        .condition(CONDITION_RULES_VALID)
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    desired.conditions.push(Condition {
        type_: CONDITION_RULES_VALID.to_owned(),
        status: status.to_owned(),
        reason: reason.as_str().to_owned(),
        message: message.to_owned(),
        last_transition_time,
        observed_generation: desired.observed_generation,
    });
}

use super::*;
use crate::job::Route;

fn jobs(batch: &str, n: usize) -> VecDeque<Job> {
    (0..n)
        .map(|i| {
            let (id, custom) = (format!("{batch}-{i}"), format!("c{i}"));
            Job::first_run(batch, id, i as u64, custom, Default::default(), Route::Auto)
        })
        .collect()
}

fn class(tenant: &str, priority: Priority, weight: u32) -> FairClass {
    FairClass {
        tenant: tenant.into(),
        priority,
        weight: Some(weight),
    }
}

fn drain(b: &mut Backlogs, n: usize) -> Vec<(String, String)> {
    (0..n)
        .filter_map(|_| b.pop().map(|(_, s, t)| (s, t)))
        .collect()
}

#[test]
fn a_small_batch_is_served_at_once_beside_a_large_one() {
    let mut b = Backlogs::default();
    b.publish("big", &FairClass::default_tenant(), jobs("big", 1000));
    assert_eq!(drain(&mut b, 10).len(), 10);
    b.publish("small", &FairClass::default_tenant(), jobs("small", 5));
    let next = drain(&mut b, 10);
    let small = next.iter().filter(|(s, _)| s == "small").count();
    assert_eq!(small, 5, "{next:?}");
    assert_eq!(b.len(), 1000 - 15);
}

#[test]
fn weights_split_three_to_one_and_priority_comes_first() {
    let mut b = Backlogs::default();
    b.publish("a", &class("heavy", Priority::NORMAL, 3), jobs("a", 400));
    b.publish("b", &class("light", Priority::NORMAL, 1), jobs("b", 400));
    let got = drain(&mut b, 200);
    let heavy = got.iter().filter(|(_, t)| t == "heavy").count();
    assert!((148..=152).contains(&heavy), "{heavy} of 200");
    b.publish(
        "urgent",
        &class("light", Priority::HIGH, 1),
        jobs("urgent", 20),
    );
    let got = drain(&mut b, 20);
    assert!(got.iter().all(|(s, _)| s == "urgent"), "{got:?}");
    let shares = Shares {
        active: b.active(),
        weights: b.weights(),
        ..Shares::default()
    };
    assert!((shares.tenant_target("heavy") - 0.75).abs() < 1e-9);
    assert!((shares.batch_target("b") - 0.25).abs() < 1e-9);
}

#[test]
fn batches_of_one_tenant_share_its_part_evenly() {
    let mut b = Backlogs::default();
    b.publish("x1", &class("t", Priority::NORMAL, 1), jobs("x1", 100));
    b.publish("x2", &class("t", Priority::NORMAL, 1), jobs("x2", 100));
    b.publish("y", &class("u", Priority::NORMAL, 1), jobs("y", 100));
    let got = drain(&mut b, 80);
    let count = |s: &str| got.iter().filter(|(x, _)| x == s).count();
    assert_eq!((count("x1"), count("x2"), count("y")), (20, 20, 40));
}

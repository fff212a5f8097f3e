//! 7c. Extraction cost per page (issue 14): parsing a page for its links (what every crawl does)
//! against parsing it once for links and a rule's fields, on fixed pages; and a whole crawl of
//! the loopback test site without and with rules (fetch + parse + extract + record per page).

use std::{
    fmt::Write as _,
    hint::black_box,
    time::{Duration, Instant},
};

use crawler_crawl::{
    CrawlConfig, Field, Follow, PageRecord, RateLimit, Rule, Rules, Sink, SinkError, html,
};
use tokio_util::sync::CancellationToken;
use url::Url;

use crawler_operator::{crd::CrawlerResource, rules::crawl_rules};

use crate::{
    report::{Report, table},
    stats::median,
    support::site::Site,
};

/// The shape of the demo site's book page (hack/demo-site).
fn book_page() -> String {
    r#"<!doctype html><html><head><title>Jane Eyre</title></head>
<body><h1><span property="v:itemreviewed">Jane Eyre</span></h1>
<div id="info"><span class="author"><span class="pl">Author</span>: <a href="/books/">Charlotte Brontë</a></span><br>
<span class="pl">Published</span>: 1847<br>
<span class="price"><span class="pl">Price</span>: 11.22 CNY</span></div>
<div id="interest"><strong class="ll rating_num" property="v:average">8.1</strong></div>
<div id="tags"><a class="tag" href="/book/">novel</a> <a class="tag" href="/book/">classic</a></div>
<p><a href="/books/">all books</a></p></body></html>"#
        .to_owned()
}

/// A list page of `items` books with the markup around them that real list pages carry.
fn list_page(items: usize) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><title>Book list</title><style>li{margin:0}</style></head><body><div id=\"wrapper\"><ul class=\"subject-list\">",
    );
    for i in 0..items {
        let _ = write!(
            page,
            "<li class=\"subject-item\"><div class=\"pic\"><img src=\"/img/{i}.jpg\" alt=\"cover\"></div>\
             <div class=\"info\"><h2><a href=\"/books/subject/{}/\" title=\"Book {i}\">Book {i}</a></h2>\
             <div class=\"pub\">Author {i} / Publisher / 19{:02} / {}.00 CNY</div>\
             <div class=\"star\"><span class=\"rating_nums\">8.{}</span><span class=\"pl\">({} ratings)</span></div>\
             <p>A short description of book {i}, long enough to look like one.</p></div></li>",
            1000 + i,
            i % 100,
            10 + i % 50,
            i % 10,
            100 + i
        );
    }
    page.push_str("</ul><div class=\"paginator\"><a class=\"next\" href=\"?start=20\">next</a></div></div></body></html>");
    page
}

fn field(selector: &str) -> Field {
    Field {
        selector: selector.into(),
        ..Field::default()
    }
}

/// examples/book-list.yaml's rules, read from the example itself and mapped as a worker maps
/// them, so the benchmark measures what the example runs and cannot drift from it.
fn book_rules() -> Vec<Rule> {
    let example: CrawlerResource =
        serde_saphyr::from_str(include_str!("../../../examples/book-list.yaml"))
            .expect("examples/book-list.yaml is a CrawlerResource");
    crawl_rules(&example.spec)
}

/// Median time of one call of `f`, from `reps` timings of `batch` calls each.
fn per_call(reps: usize, batch: u32, mut f: impl FnMut()) -> Duration {
    let times = (0..reps)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..batch {
                f();
            }
            started.elapsed() / batch
        })
        .collect();
    median(times)
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Drops records (the crawl's own cost is what is measured), counting them.
#[derive(Default)]
struct Count(u64);

impl Sink for Count {
    async fn write(&mut self, record: &PageRecord) -> Result<(), SinkError> {
        black_box(serde_json::to_vec(record).map_err(SinkError::Serialize)?);
        self.0 += 1;
        Ok(())
    }
}

/// Wall time per page of a crawl of the loopback tree site, `pages` pages, no rate limit.
async fn crawl_per_page(site: &Site, task: &str, pages: u64, rules: Vec<Rule>) -> Duration {
    let mut config = CrawlConfig::new(task, [site.seed(task)]);
    // The local site is on loopback, which a crawl refuses unless the installation allows it.
    config.address_policy = "127.0.0.0/8".parse().unwrap();
    config.max_depth = 20;
    config.max_pages = pages;
    config.rate_limit = RateLimit {
        requests_per_second: 1e6,
        burst: 1000,
    };
    config.rules = rules;
    let mut sink = Count::default();
    let started = Instant::now();
    crawler_crawl::run(config, &mut sink, CancellationToken::new(), |_| {})
        .await
        .expect("the crawl runs");
    let elapsed = started.elapsed();
    assert_eq!(sink.0, pages, "{task}: every page recorded");
    elapsed / u32::try_from(pages).unwrap()
}

pub(crate) async fn run(reps: usize, report: &mut Report) {
    let rules = Rules::compile(&book_rules()).expect("the example's rules compile");
    let list_url = Url::parse("http://127.0.0.1:16480/books/").unwrap();
    let book_url = Url::parse("http://127.0.0.1:16480/books/subject/1006/").unwrap();
    let pages = [
        (
            "book page (demo site)",
            book_page(),
            &book_url,
            1usize,
            200u32,
        ),
        ("list page, 20 books", list_page(20), &list_url, 0, 50),
        ("list page, 500 books", list_page(500), &list_url, 0, 2),
    ];
    let mut rows = Vec::new();
    for (name, page, url, rule, batch) in &pages {
        let parse = per_call(reps, *batch, || {
            black_box(html::parse_page(black_box(page), url));
        });
        let both = per_call(reps, *batch, || {
            black_box(html::parse_with_rule(
                black_box(page),
                url,
                &rules,
                Some(*rule),
            ));
        });
        let (_, extraction) = html::parse_with_rule(page, url, &rules, Some(*rule));
        let extraction = extraction.expect("a rule ran");
        rows.push(vec![
            (*name).to_owned(),
            format!("{:.1}", page.len() as f64 / 1024.0),
            rules.name(*rule).unwrap_or("-").to_owned(),
            format!(
                "{} fields, {} links",
                extraction.fields.len(),
                extraction.follow.len()
            ),
            us(parse),
            us(both),
            us(both.saturating_sub(parse)),
        ]);
    }

    // The whole crawl: the tree site's pages, fetched over loopback, parsed and recorded.
    let site = Site::start().await;
    let tree_rules = vec![Rule {
        name: "page".into(),
        url_match: Some("/t/".into()),
        follow: vec![Follow {
            selector: "a".into(),
            rule: None,
        }],
        fields: [
            ("title".to_owned(), field("title")),
            (
                "links".to_owned(),
                Field {
                    value: "attr:href".into(),
                    multiple: true,
                    ..field("a")
                },
            ),
        ]
        .into(),
    }];
    let crawl_pages = 2000;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for i in 0..reps.min(5) {
        without.push(crawl_per_page(&site, &format!("plain-{i}"), crawl_pages, Vec::new()).await);
        with.push(
            crawl_per_page(
                &site,
                &format!("rules-{i}"),
                crawl_pages,
                tree_rules.clone(),
            )
            .await,
        );
    }
    let (without, with) = (median(without), median(with));
    report.section(
        &format!("7c. Extraction cost per page (median of {reps} runs)"),
        format!(
            "{}\n{}\n`parse` is what every crawl does (links and title, `html::parse_page`); `parse + rule` parses once for links and the rule's fields (`html::parse_with_rule`, what a task with rules does); `extraction` is the difference. The crawl rows fetch {crawl_pages} pages of the loopback test site (2 in flight, no rate limit) and write each record as JSON; the rule there takes the title and every link's href.\n",
            table(
                &["page", "KiB", "rule", "extracted", "parse µs", "parse + rule µs", "extraction µs"],
                rows
            ),
            table(
                &["whole crawl, per page", "µs"],
                vec![
                    vec!["fetch + parse + record, no rules".to_owned(), us(without)],
                    vec!["fetch + parse + extract + record, one rule".to_owned(), us(with)],
                    vec!["difference".to_owned(), us(with.saturating_sub(without))],
                ]
            )
        ),
    );
}

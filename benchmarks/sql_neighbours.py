"""Near-miss benchmark for text2sql execution match: neighbour queries of every gold query.

For every gold query of the shipped sample (``distil_platform/data/text2sql/test.jsonl``) and, when
present, of the public text2sql test set (``../shared/benchmark/related/distil-labs__distil-text2sql/
finetuning/data/test.jsonl``) this generates the gold's neighbours
(:func:`distil_platform.evaluation.scoring.sql.neighbours.neighbour_queries`: a comparison operator replaced, a
literal or LIMIT shifted by one unit, DISTINCT dropped/added, a predicate dropped, ASC/DESC swapped,
an aggregate changed, JOIN <-> LEFT JOIN) and scores each one against the gold with
``sql_execution_match``:

- **before**: ``suite=False``, the 3 generated databases only (the scoring before this benchmark);
- **after**: ``suite=True``, the 3 databases plus the gold's distinguishing databases.

A neighbour that scores 1.0 *after* is listed; each such neighbour has a hand judgement below
(``JUDGED_EQUIVALENT``: equivalent to the gold under the schema's constraints, with the reason).
The fraction caught is over the semantically different neighbours: all neighbours minus the ones
judged equivalent. Also: scoring time per item (the gold scored against itself) before, after with
a cold cache (includes the search), and after with a warm cache.

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/sql_neighbours.py --out benchmarks/results/sql_neighbours.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "distil_platform" / "data" / "text2sql" / "test.jsonl"
PUBLIC = (
    REPO.parent / "shared" / "benchmark" / "related" / "distil-labs__distil-text2sql" / "finetuning" / "data"
)

# Neighbours that still score 1.0 with the distinguishing databases, judged by hand: equivalent to
# the gold given the schema (key: neighbour SQL as generated). Anything passing that is not listed
# here counts as a semantically different neighbour that was NOT caught.
_PK_STAR = "`*` includes the INTEGER PRIMARY KEY, so rows are already distinct"
_GROUP_KEY = "every GROUP BY key is selected, so rows are already distinct"
_ONE_ROW = "LIMIT 1: one row is always distinct"
_UNIQUE = "the selected column is UNIQUE (and NOT NULL) in the schema"
_RIGHT_FILTER = "the WHERE/HAVING condition on the joined table rejects the NULL-extended rows"
_BOOLEAN = "a BOOLEAN column holds 0 or 1 (the generator keeps to that domain): >= 1 is = 1, <= 0 is = 0"
JUDGED_EQUIVALENT: dict[str, str] = {
    # shipped sample
    "SELECT DISTINCT name FROM departments ORDER BY budget DESC LIMIT 1": _ONE_ROW,
    "SELECT DISTINCT d.name, SUM(e.salary) FROM departments AS d JOIN employees AS e ON e.department_id = d.id GROUP BY d.id, d.name": "departments.name is UNIQUE, so (name, sum) rows are distinct",
    "SELECT AVG(o.total_amount) FROM orders AS o LEFT JOIN customers AS c ON o.customer_id = c.id WHERE c.country = 'Germany'": _RIGHT_FILTER,
    "SELECT name FROM customers WHERE NOT id IN (SELECT DISTINCT customer_id FROM orders)": "DISTINCT inside IN (...) does not change membership",
    "SELECT DISTINCT sku, name FROM products WHERE discontinued = 1 AND price > 100": "products.sku is UNIQUE",
    "SELECT AVG(e.grade) FROM enrollments AS e LEFT JOIN courses AS c ON e.course_id = c.id WHERE c.code = 'CS101'": _RIGHT_FILTER,
    "SELECT c.title FROM courses AS c LEFT JOIN enrollments AS e ON e.course_id = c.id WHERE e.semester = 'Fall 2024' GROUP BY c.id, c.title ORDER BY COUNT(*) DESC LIMIT 1": _RIGHT_FILTER,
    "SELECT DISTINCT doctor_name, COUNT(*) AS appointment_count FROM appointments GROUP BY doctor_name ORDER BY appointment_count DESC": _GROUP_KEY,
    "SELECT DISTINCT account_number FROM accounts ORDER BY balance ASC LIMIT 5": "accounts.account_number is UNIQUE",
    "SELECT a.owner_name, COUNT(DISTINCT t.id) FROM accounts AS a JOIN transactions AS t ON t.account_id = a.id GROUP BY a.id, a.owner_name": "t.id is the primary key and each transaction joins one account: COUNT(DISTINCT t.id) = COUNT(t.id)",
    "SELECT AVG(p.like_count) FROM posts AS p LEFT JOIN users AS u ON p.user_id = u.id WHERE u.is_verified = 1": _RIGHT_FILTER,
    "SELECT DISTINCT genre, COUNT(*) FROM movies GROUP BY genre": _GROUP_KEY,
    "SELECT COUNT(*) FROM tasks AS t LEFT JOIN projects AS p ON t.project_id = p.id WHERE p.name = 'Website Redesign' AND t.status = 'todo'": _RIGHT_FILTER,
    "SELECT DISTINCT hospital FROM doctors GROUP BY hospital HAVING COUNT(*) > 3": _GROUP_KEY,
    "SELECT DISTINCT a.section, COUNT(c.id) FROM articles AS a JOIN comments AS c ON c.article_id = a.id WHERE c.is_flagged = 1 GROUP BY a.section": _GROUP_KEY,
    "SELECT a.section, COUNT(DISTINCT c.id) FROM articles AS a JOIN comments AS c ON c.article_id = a.id WHERE c.is_flagged = 1 GROUP BY a.section": "c.id is the primary key and each comment joins one article: COUNT(DISTINCT c.id) = COUNT(c.id)",
    "SELECT a.section, COUNT(c.id) FROM articles AS a LEFT JOIN comments AS c ON c.article_id = a.id WHERE c.is_flagged = 1 GROUP BY a.section": _RIGHT_FILTER,
    "SELECT DISTINCT s.country, AVG(sh.cost) FROM suppliers AS s JOIN shipments AS sh ON sh.supplier_id = s.id GROUP BY s.country": _GROUP_KEY,
    "SELECT DISTINCT name FROM suppliers WHERE rating >= 4.5": _UNIQUE,
    "SELECT DISTINCT book_title FROM loans GROUP BY book_title ORDER BY COUNT(*) DESC LIMIT 5": _GROUP_KEY,
    "SELECT COUNT(*) FROM deliveries AS dl LEFT JOIN drivers AS d ON dl.driver_id = d.id WHERE d.name = 'Ana Silva' AND dl.status = 'delivered'": _RIGHT_FILTER,
    "SELECT DISTINCT brand_name FROM medications ORDER BY unit_price ASC LIMIT 1": _ONE_ROW,
    "SELECT DISTINCT f.flight_number, SUM(b.fare) FROM flights AS f JOIN bookings AS b ON b.flight_id = f.id GROUP BY f.flight_number": _GROUP_KEY,
    "SELECT DISTINCT name FROM menu_items WHERE course = 'main' ORDER BY calories ASC LIMIT 1": _ONE_ROW,
    "SELECT a.name FROM agents AS a JOIN listings AS l ON l.agent_id = a.id WHERE l.sold >= 1 GROUP BY a.id, a.name ORDER BY COUNT(*) DESC LIMIT 1": _BOOLEAN,
    "SELECT a.name FROM agents AS a LEFT JOIN listings AS l ON l.agent_id = a.id WHERE l.sold = 1 GROUP BY a.id, a.name ORDER BY COUNT(*) DESC LIMIT 1": _RIGHT_FILTER,
    "SELECT p.name FROM players AS p LEFT JOIN teams AS t ON p.team_id = t.id WHERE t.name = 'Riverside FC' AND p.position = 'Goalkeeper'": _RIGHT_FILTER,
    "SELECT DISTINCT name FROM teams WHERE founded_year < 1900": _UNIQUE,
    "SELECT AVG(r.value) FROM readings AS r LEFT JOIN sensors AS s ON r.sensor_id = s.id WHERE s.location = 'Greenhouse'": _RIGHT_FILTER,
    "SELECT DISTINCT p.name, SUM(s.seats) FROM plans AS p JOIN subscriptions AS s ON s.plan_id = p.id GROUP BY p.id, p.name": "plans.name is UNIQUE, so (name, sum) rows are distinct",
    "SELECT DISTINCT assigned_agent, AVG(satisfaction_score) FROM support_tickets GROUP BY assigned_agent HAVING COUNT(*) >= 10": _GROUP_KEY,
    "SELECT sku, name FROM products WHERE discontinued >= 1 AND price > 100": _BOOLEAN,
    "SELECT AVG(p.like_count) FROM posts AS p JOIN users AS u ON p.user_id = u.id WHERE u.is_verified >= 1": _BOOLEAN,
    "SELECT a.section, COUNT(c.id) FROM articles AS a JOIN comments AS c ON c.article_id = a.id WHERE c.is_flagged >= 1 GROUP BY a.section": _BOOLEAN,
    "SELECT COUNT(DISTINCT city) FROM members WHERE is_active >= 1": _BOOLEAN,
    # public test set
    "SELECT * FROM employees WHERE is_contractor >= 1 AND hourly_rate > 75": _BOOLEAN,
    "SELECT COUNT(*) FROM members WHERE is_premium >= 1 AND join_date >= '2023-01-01' AND join_date < '2024-01-01'": _BOOLEAN,
    "SELECT MAX(price) FROM items WHERE is_on_sale >= 1": _BOOLEAN,
    "SELECT COUNT(*) FROM subscriptions WHERE is_active <= 0": _BOOLEAN,
    "SELECT DISTINCT * FROM customers WHERE country = 'Canada'": _PK_STAR,
    "SELECT DISTINCT blood_type, COUNT(*) FROM patients GROUP BY blood_type": _GROUP_KEY,
    "SELECT DISTINCT * FROM employees WHERE is_contractor = 1 AND hourly_rate > 75": _PK_STAR,
    "SELECT DISTINCT * FROM courses WHERE difficulty = 'advanced'": _PK_STAR,
    "SELECT DISTINCT team, SUM(base_salary + bonus) FROM employees GROUP BY team": _GROUP_KEY,
    "SELECT DISTINCT category, AVG((selling_price - cost) / cost * 100) FROM products GROUP BY category HAVING AVG((selling_price - cost) / cost * 100) > 20": _GROUP_KEY,
    "SELECT DISTINCT name, performance_rating FROM employees ORDER BY performance_rating ASC LIMIT 1": _ONE_ROW,
    "SELECT DISTINCT priority, COUNT(*) FROM tickets GROUP BY priority": _GROUP_KEY,
    "SELECT DISTINCT * FROM sales WHERE sale_date >= DATE('now', '-7 days')": _PK_STAR,
    "SELECT DISTINCT position, COUNT(*) FROM applicants GROUP BY position": _GROUP_KEY,
    "SELECT DISTINCT * FROM employees WHERE end_date >= '2024-01-01' AND end_date < '2025-01-01'": _PK_STAR,
    "SELECT DISTINCT sender_id, COUNT(*) FROM messages GROUP BY sender_id": _GROUP_KEY,
    "SELECT t.name, COUNT(*) FROM teams AS t LEFT JOIN projects AS p ON t.id = p.team_id WHERE p.status = 'active' GROUP BY t.id, t.name": _RIGHT_FILTER,
    "SELECT a.name, SUM(al.sales) FROM artists AS a LEFT JOIN albums AS al ON a.id = al.artist_id GROUP BY a.id, a.name HAVING SUM(al.sales) > 1000000": "an artist without albums has SUM = NULL, which fails the HAVING",
    "SELECT c.name, COUNT(*) FROM clinics AS c LEFT JOIN visits AS v ON c.id = v.clinic_id WHERE v.visit_date >= '2024-01-01' GROUP BY c.id, c.name": _RIGHT_FILTER,
    "SELECT r.name FROM regions AS r LEFT JOIN stores AS s ON r.id = s.region_id GROUP BY r.id, r.name HAVING SUM(s.revenue) > 500000": "a region without stores has SUM = NULL, which fails the HAVING",
    "SELECT AVG(u.data_used_gb) FROM subscribers AS s LEFT JOIN usage_logs AS u ON s.id = u.subscriber_id WHERE s.plan_type = 'premium'": "the NULL-extended rows add NULL data_used_gb, which AVG ignores",
    "SELECT DISTINCT role, MIN(hourly_wage), MAX(hourly_wage) FROM staff GROUP BY role": _GROUP_KEY,
    "SELECT DISTINCT STRFTIME('%W', purchase_date) AS week, COUNT(*) FROM purchases WHERE purchase_date >= '2024-01-01' AND purchase_date < '2025-01-01' GROUP BY STRFTIME('%W', purchase_date)": _GROUP_KEY,
    "SELECT DISTINCT * FROM vehicles WHERE price BETWEEN 20000 AND 40000": _PK_STAR,
    "SELECT DISTINCT * FROM contacts WHERE company LIKE '%Tech%'": _PK_STAR,
    "SELECT DISTINCT * FROM employees WHERE salary > (SELECT AVG(salary) FROM employees)": _PK_STAR,
    "SELECT DISTINCT p1.* FROM properties AS p1 WHERE p1.price > (SELECT AVG(p2.price) FROM properties AS p2 WHERE p2.city = p1.city)": _PK_STAR,
    "SELECT (COUNT(CASE WHEN status = 'completed' THEN 0 END) * 100.0 / COUNT(*)) FROM tasks": "COUNT counts non-NULL values: THEN 0 counts the same rows as THEN 1",
    "SELECT (COUNT(CASE WHEN status = 'completed' THEN 2 END) * 100.0 / COUNT(*)) FROM tasks": "COUNT counts non-NULL values: THEN 2 counts the same rows as THEN 1",
    "SELECT DISTINCT s.* FROM suppliers AS s LEFT JOIN purchase_orders AS po ON s.id = po.supplier_id WHERE po.id IS NULL": _PK_STAR,
    "SELECT DISTINCT d.name, b.spent FROM divisions AS d JOIN budgets AS b ON d.id = b.division_id WHERE b.fiscal_year = 2024 ORDER BY b.spent DESC LIMIT 1": _ONE_ROW,
    "SELECT d.name, b.spent FROM divisions AS d LEFT JOIN budgets AS b ON d.id = b.division_id WHERE b.fiscal_year = 2024 ORDER BY b.spent DESC LIMIT 1": _RIGHT_FILTER,
    "SELECT DISTINCT * FROM routes WHERE origin_city = 'Chicago' AND distance_km <= 500": _PK_STAR,
}
# Judged NOT equivalent but still passing (listed in benchmarks/README.md), for the record:
# - shipped t2s-test-011 `e.semester <= 'Fall 2024'`: changes which course has the most enrolments
#   only when many enrolments sort below 'Fall 2024'; no candidate database had enough.
# - public 47 `ON d.id >= b.division_id`: the top budget row joins several divisions and LIMIT 1
#   keeps the first in scan order, which is its own division on every generated database.


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _items(name: str, path: Path) -> list[tuple[str, str, str]]:
    from distil_platform.evaluation.scoring import split_schema_question

    items = []
    for i, row in enumerate(_rows(path)):
        schema = str(row.get("context") or "").strip()
        if not schema:
            schema, _ = split_schema_question(row["question"])
        items.append((f"{name}:{row.get('id', i)}", schema, row["answer"].strip().rstrip(";")))
    return items


def run(sets: dict[str, Path]) -> dict:
    from distil_platform.evaluation.scoring import sql_execution_match
    from distil_platform.evaluation.scoring.sql import suite as sql_suite
    from distil_platform.evaluation.scoring.sql.neighbours import NEIGHBOUR_KINDS, neighbour_queries

    report: dict = {"sets": {}}
    for name, path in sets.items():
        items = _items(name, path)
        per_kind = {
            k: {"n": 0, "equivalent": 0, "caught_before": 0, "caught_after": 0} for k in NEIGHBOUR_KINDS
        }
        passing_after, passing_before = [], 0
        times = {"before": 0.0, "after_cold": 0.0, "after_warm": 0.0}
        possibly_equivalent = 0
        n_databases = []
        for item_id, schema, gold in items:
            start = time.perf_counter()
            assert sql_execution_match(gold, gold, schema, suite=False) == 1.0, item_id
            times["before"] += time.perf_counter() - start
            start = time.perf_counter()
            assert sql_execution_match(gold, gold, schema) == 1.0, item_id
            times["after_cold"] += time.perf_counter() - start
            start = time.perf_counter()
            assert sql_execution_match(gold, gold, schema) == 1.0, item_id
            times["after_warm"] += time.perf_counter() - start
            suite = sql_suite.distinguishing_suite(schema, gold)
            possibly_equivalent += len(suite.possibly_equivalent)
            n_databases.append(len(suite.databases))
            for neighbour in neighbour_queries(gold):
                stats = per_kind[neighbour.kind]
                stats["n"] += 1
                before = sql_execution_match(neighbour.sql, gold, schema, suite=False)
                after = sql_execution_match(neighbour.sql, gold, schema)
                equivalent = neighbour.sql in JUDGED_EQUIVALENT
                stats["equivalent"] += equivalent
                if not equivalent:
                    stats["caught_before"] += before == 0.0
                    stats["caught_after"] += after == 0.0
                passing_before += before == 1.0
                if after == 1.0:
                    passing_after.append(
                        {
                            "item": item_id,
                            "gold": gold,
                            "kind": neighbour.kind,
                            "change": neighbour.change,
                            "neighbour": neighbour.sql,
                            "judged_equivalent": JUDGED_EQUIVALENT.get(neighbour.sql),
                        }
                    )
        total = sum(s["n"] for s in per_kind.values())
        different = total - sum(s["equivalent"] for s in per_kind.values())
        caught_before = sum(s["caught_before"] for s in per_kind.values())
        caught_after = sum(s["caught_after"] for s in per_kind.values())
        n = len(items)
        report["sets"][name] = {
            "items": n,
            "neighbours": total,
            "judged_equivalent": total - different,
            "semantically_different": different,
            "caught_before": caught_before,
            "caught_after": caught_after,
            "fraction_caught_before": round(caught_before / different, 4) if different else None,
            "fraction_caught_after": round(caught_after / different, 4) if different else None,
            "passing_before": passing_before,
            "per_kind": per_kind,
            "ms_per_item": {k: round(1000 * v / n, 1) for k, v in times.items()},
            "suite_databases_mean": round(sum(n_databases) / n, 2),
            "suite_databases_max": max(n_databases),
            "possibly_equivalent_recorded": possibly_equivalent,
            "passing_after": passing_after,
        }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sets = {"shipped": SHIPPED}
    if (PUBLIC / "test.jsonl").exists():
        sets["public"] = PUBLIC / "test.jsonl"
    else:
        print(f"public text2sql test set not found under {PUBLIC}: shipped sample only", file=sys.stderr)
    # A fresh, empty suite cache, so "after_cold" includes the search.
    os.environ["DAGSTER_HOME"] = tempfile.mkdtemp(prefix="sql-neighbours-")
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    report = run(sets)
    report["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "started": started,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    for name, result in report["sets"].items():
        print(
            f"{name}: {result['items']} golds, {result['neighbours']} neighbours "
            f"({result['judged_equivalent']} judged equivalent); caught before "
            f"{result['caught_before']}/{result['semantically_different']} = {result['fraction_caught_before']}, "
            f"after {result['caught_after']}/{result['semantically_different']} = {result['fraction_caught_after']}; "
            f"ms/item {result['ms_per_item']}; suite dbs mean {result['suite_databases_mean']}"
        )
        for p in result["passing_after"]:
            mark = "EQUIV" if p["judged_equivalent"] else "DIFFERENT?"
            print(f"  [{mark}] {p['item']} {p['kind']} ({p['change']}): {p['neighbour']}")
    print("load", report["machine"]["loadavg_before"], "->", report["machine"]["loadavg_after"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

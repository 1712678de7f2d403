import logging
import math

import numpy as np
import pytest

from fair_trl.groups import (
    GroupKeyer,
    InvalidDemographic,
    age_bin,
    column_kind,
    column_names,
    parse_age,
    parse_category,
    parse_columns,
    parse_sex,
)

LOGGER = "fair_trl.groups"


# --- age bins -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "label"),
    [
        (0.5, "a1"),
        (1, "a1"),
        (25, "a1"),
        (25.0, "a1"),
        (25.5, "a2"),
        (26, "a2"),
        (50, "a2"),
        (51, "a3"),
        (75, "a3"),
        (76, "a4"),
        (120, "a4"),
        (np.int64(51), "a3"),
        (np.float32(76.0), "a4"),
    ],
)
def test_age_bin_default(age, label):
    assert age_bin(age) == label


@pytest.mark.parametrize(
    ("age", "bins", "label"),
    [
        (40, (40,), "a1"),
        (41, (40,), "a2"),
        (10, [18, 65], "a1"),
        (18, [18, 65], "a1"),
        (30, [18, 65], "a2"),
        (66, [18, 65], "a3"),
        (5, (10, 20, 30, 40, 50), "a1"),
        (45, (10, 20, 30, 40, 50), "a5"),
        (99, (10, 20, 30, 40, 50), "a6"),
        (30, np.array([25, 50, 75]), "a2"),
        (12.5, (12.5, 13), "a1"),
    ],
)
def test_age_bin_custom(age, bins, label):
    assert age_bin(age, bins) == label


@pytest.mark.parametrize(
    ("bins", "named"),
    [
        ((), "non-empty"),
        ([], "non-empty"),
        ((50, 25), "25"),
        ((25, 25), "25"),
        ((25, float("inf")), "inf"),
        ((float("nan"),), "nan"),
        ((25, "50"), "'50'"),
        ((True,), "True"),
        ("25", "'25'"),
        (None, "None"),
    ],
)
def test_invalid_bins_raise(bins, named):
    with pytest.raises(ValueError, match=named):
        age_bin(30, bins)
    with pytest.raises(ValueError, match=named):
        GroupKeyer(age_bins=bins)


@pytest.mark.parametrize("age", [float("nan"), float("inf"), None, "45", True])
def test_age_bin_rejects_unparsed(age):
    with pytest.raises(ValueError):
        age_bin(age)


# --- parse_age ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (45, 45.0),
        (45.5, 45.5),
        (np.int32(45), 45.0),
        (np.float64(45.0), 45.0),
        ("45", 45.0),
        (" 45.0 ", 45.0),
        ("+45", 45.0),
        ("4.5e1", 45.0),
        (b"45", 45.0),
        ("120", 120.0),
        (120, 120.0),
        ("053", 53.0),
        ("053Y", 53.0),
        ("053y", 53.0),
        ("53Y", 53.0),
        (" 080Y ", 80.0),
        ("006M", 0.5),
        ("018M", 1.5),
        ("052W", 52 * 7 / 365.25),
        ("010D", 10 / 365.25),
    ],
)
def test_parse_age_valid(value, expected):
    assert parse_age(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        float("nan"),
        np.nan,
        np.float32("nan"),
        "",
        "   ",
        "\t\n",
        "unknown",
        "Unknown",
        "UNK",
        "n/a",
        "N/A",
        "NA",
        "none",
        "None",
        "nan",
        "NaN",
        0,
        0.0,
        "0",
        " 0.0 ",
        "-0",
        "000Y",
        "000M",
    ],
)
def test_parse_age_missing(value):
    assert parse_age(value) is None


@pytest.mark.parametrize(
    "value",
    [
        -5,
        "-5",
        -0.5,
        200,
        "200",
        120.5,
        "121Y",
        "abc",
        "45 years",
        "45years",
        "45,5",
        "1_000",
        "053Z",
        "Y",
        float("inf"),
        float("-inf"),
        "inf",
        "Infinity",
        True,
        False,
        np.bool_(True),
        10**400,
        [45],
        {"age": 45},
        object(),
        complex(45, 0),
    ],
)
def test_parse_age_invalid(value):
    with pytest.raises(InvalidDemographic) as err:
        parse_age(value)
    assert isinstance(err.value, ValueError)
    # The message must name the offending value so a log line is actionable.
    assert repr(value)[:20] in str(err.value)


@pytest.mark.parametrize(("value", "max_age", "ok"), [(95, 90, False), (90, 90, True), ("150", 200, True)])
def test_parse_age_max_age(value, max_age, ok):
    if ok:
        assert parse_age(value, max_age=max_age) == float(value)
    else:
        with pytest.raises(InvalidDemographic, match="max_age"):
            parse_age(value, max_age=max_age)


# --- parse_sex ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("F", "F"),
        ("f", "F"),
        (" F ", "F"),
        ("female", "F"),
        ("Female", "F"),
        ("FEMALE", "F"),
        ("woman", "F"),
        ("M", "M"),
        ("m", "M"),
        ("male", "M"),
        ("Male", "M"),
        ("MALE", "M"),
        ("man", "M"),
        (b"F", "F"),
        (np.str_("male"), "M"),
    ],
)
def test_parse_sex_valid(value, expected):
    assert parse_sex(value) == expected


@pytest.mark.parametrize(
    "value",
    [None, float("nan"), "", "  ", "unknown", "Unknown", "unk", "U", "u", "n/a", "NA", "none", "nan"],
)
def test_parse_sex_missing(value):
    assert parse_sex(value) is None


@pytest.mark.parametrize("value", ["Other", "other", "X", "O", "fem ale", "females", 3, 0, 1, True, 1.5, ["F"]])
def test_parse_sex_invalid(value):
    with pytest.raises(InvalidDemographic, match=repr(value).replace("[", r"\[").replace("]", r"\]")):
        parse_sex(value)


# --- generic categories and column kinds ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("White", "White"),
        ("  Black or African American ", "Black or African American"),
        ("Hispanic, Latino", "Hispanic, Latino"),
        ("a|b", "a_b"),
        ("k=v", "k_v"),
        ("x=|y,z", "x__y,z"),
        (3, "3"),
        (0, "0"),
        (2.5, "2.5"),
        (b"Asian", "Asian"),
        (None, None),
        (float("nan"), None),
        ("", None),
        (" ", None),
        ("Unknown", None),
        ("UNK", None),
        ("N/A", None),
        ("na", None),
        ("None", None),
        ("NaN", None),
    ],
)
def test_parse_category(value, expected):
    assert parse_category(value) == expected


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("age", "age"),
        ("Age", "age"),
        ("AGE", "age"),
        ("age_approx", "age"),
        ("AgeAtScan", "age"),
        ("sex", "sex"),
        ("Sex", "sex"),
        ("gender", "sex"),
        ("GENDER", "sex"),
        ("race", "category"),
        ("insurance", "category"),
        ("patient_age", "category"),
        ("agency", "category"),
        ("sex_at_birth", "category"),
    ],
)
def test_column_kind(column, kind):
    assert column_kind(column) == kind


# --- GroupKeyer: keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"sex": "F", "age": 60}, "sex=F|age=a3"),
        ({"sex": "male", "age": "053Y"}, "sex=M|age=a3"),
        ({"sex": "Female", "age": " 25 "}, "sex=F|age=a1"),
        # Partly known rows are unlabeled: a key of their known part would be a small group of its own.
        ({"sex": "F", "age": None}, None),
        ({"sex": "F", "age": 0}, None),
        ({"sex": "F"}, None),
        ({"sex": "U", "age": 80}, None),
        ({"sex": "Other", "age": 80}, None),
        ({"sex": None, "age": "unknown"}, None),
        ({"sex": "F", "age": -5}, None),
        ({}, None),
        ({"sex": "M", "age": 30, "extra": "ignored"}, "sex=M|age=a2"),
    ],
)
def test_key_default_columns(row, expected):
    assert GroupKeyer().key(row) == expected


def test_key_follows_configured_column_order():
    row = {"sex": "F", "age": 60, "race": "Asian"}
    assert GroupKeyer(columns=["sex", "age"]).key(row) == "sex=F|age=a3"
    assert GroupKeyer(columns=["age", "sex"]).key(row) == "age=a3|sex=F"
    assert GroupKeyer(columns=["race", "age", "sex"]).key(row) == "race=Asian|age=a3|sex=F"
    assert GroupKeyer(columns=["race"]).key(row) == "race=Asian"


def test_key_uses_configured_column_names_verbatim():
    keyer = GroupKeyer(columns=["Gender", "age_approx"])
    assert keyer.key({"Gender": "woman", "age_approx": 45.0}) == "Gender=F|age_approx=a2"


def test_key_with_custom_bins_and_max_age():
    keyer = GroupKeyer(columns=["age"], age_bins=(40,), max_age=100)
    assert keyer.kinds == {"age": "age"}
    assert keyer.keys([{"age": 40}, {"age": 41}, {"age": 101}]) == ["age=a1", "age=a2", None]
    assert keyer.invalid_counts == {"age": 1}


def test_generic_column_with_separators_keeps_keys_unambiguous():
    keyer = GroupKeyer(columns=["site", "sex"])
    key = keyer.key({"site": "ward=A|B, north", "sex": "M"})
    assert key == "site=ward_A_B, north|sex=M"
    # Splitting the key back recovers exactly the configured columns.
    assert [part.split("=", 1)[0] for part in key.split("|")] == ["site", "sex"]


def test_keys_matches_key():
    rows = [{"sex": "F", "age": 10}, {"sex": "m", "age": "090Y"}, {"sex": "", "age": ""}]
    assert GroupKeyer().keys(rows) == ["sex=F|age=a1", "sex=M|age=a4", None]
    assert GroupKeyer().keys(iter(rows)) == ["sex=F|age=a1", "sex=M|age=a4", None]
    assert GroupKeyer().keys([]) == []


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("sex", "female", "F"),
        ("gender", "MALE", "M"),
        ("age", 51, "a3"),
        ("age", "006M", "a1"),
        ("age", "abc", None),
        ("race", "White", "White"),
        ("race", "a|b", "a_b"),
    ],
)
def test_attribute(column, value, expected):
    assert GroupKeyer(columns=["sex", "age", "race"]).attribute(column, value) == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"columns": ["sex", "sex"]}, "duplicate"),
        ({"columns": ["a|b"]}, "a|b"),
        ({"columns": ["a=b"]}, "a=b"),
        ({"columns": [""]}, "''"),
        ({"columns": [3]}, "3"),
        ({"max_age": 0}, "max_age"),
        ({"max_age": float("inf")}, "max_age"),
        ({"max_age": "120"}, "max_age"),
    ],
)
def test_keyer_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("|", r"\|")):
        GroupKeyer(**kwargs)


def test_single_string_column_is_not_split():
    assert GroupKeyer(columns="sex").columns == ("sex",)


# --- GroupKeyer: counting and logging --------------------------------------------------------------


def test_invalid_values_counted_and_warned_once_per_column(caplog):
    keyer = GroupKeyer(columns=["sex", "age", "race"])
    rows = [
        {"sex": "Other", "age": -5, "race": "White"},
        {"sex": "X", "age": "200", "race": None},
        {"sex": 3, "age": "45 years", "race": "Asian"},
        {"sex": "F", "age": float("inf"), "race": "unknown"},
        {"sex": "M", "age": 40, "race": "Black"},
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        keys = keyer.keys(rows)

    assert keys == [None, None, None, None, "sex=M|age=a2|race=Black"]
    assert keyer.invalid_counts == {"sex": 3, "age": 4, "race": 0}
    assert keyer.missing_counts == {"sex": 0, "age": 0, "race": 2}

    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 2
    assert all(r.levelno == logging.WARNING for r in records)
    sex_msg, age_msg = (r.getMessage() for r in records)
    # Each warning names the column, the first bad value, and the consequence.
    assert "'sex'" in sex_msg and "'Other'" in sex_msg and "missing" in sex_msg
    assert "'age'" in age_msg and "-5" in age_msg and "missing" in age_msg

    # More invalid values later: still counted, never logged again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        keyer.key({"sex": "Other", "age": "abc", "race": "White"})
    assert [r for r in caplog.records if r.name == LOGGER] == []
    assert keyer.invalid_counts == {"sex": 4, "age": 5, "race": 0}


def test_warning_state_is_per_keyer(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        GroupKeyer().key({"sex": "X"})
        GroupKeyer().key({"sex": "X"})
    assert len([r for r in caplog.records if r.name == LOGGER]) == 2


def test_missing_counted_separately_and_absent_column_is_missing(caplog):
    keyer = GroupKeyer()
    rows = [
        {"sex": None, "age": 0},
        {"sex": "U", "age": ""},
        {"sex": "n/a", "age": "unknown"},
        {"age": float("nan")},
        {"sex": "F"},
        {},
        {"sex": "F", "age": 30},
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        keys = keyer.keys(rows)
    assert keys == [None, None, None, None, None, None, "sex=F|age=a2"]
    assert keyer.missing_counts == {"sex": 5, "age": 6}
    assert keyer.invalid_counts == {"sex": 0, "age": 0}
    # Missing is normal in clinical data: no warnings for it.
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_summary():
    keyer = GroupKeyer()
    assert keyer.summary() == {
        "rows": 0,
        "rows_without_key": 0,
        "missing": {"sex": 0, "age": 0},
        "invalid": {"sex": 0, "age": 0},
    }
    keyer.keys([{"sex": "F", "age": 60}, {"sex": "Other", "age": None}, {"sex": "M", "age": 999}])
    summary = keyer.summary()
    assert summary == {
        "rows": 3,
        "rows_without_key": 2,
        "missing": {"sex": 0, "age": 1},
        "invalid": {"sex": 1, "age": 1},
    }
    # A copy: callers may mutate or serialise it without touching the keyer.
    summary["invalid"]["sex"] = 100
    assert keyer.invalid_counts["sex"] == 1


def test_attribute_counts_like_key():
    keyer = GroupKeyer()
    assert keyer.attribute("age", "abc") is None
    assert keyer.attribute("age", None) is None
    assert keyer.attribute("sex", "F") == "F"
    assert keyer.invalid_counts == {"sex": 0, "age": 1}
    assert keyer.missing_counts == {"sex": 0, "age": 1}
    assert keyer.summary()["rows"] == 0


def test_parse_age_results_are_finite():
    for value in ["053Y", "006M", 45, " 45.0 "]:
        age = parse_age(value)
        assert age is not None and math.isfinite(age)


def test_from_config_and_sibling_share_warnings_but_not_counts(caplog):
    from types import SimpleNamespace

    config = SimpleNamespace(demographic_columns=["sex", "age"], age_bins=[30.0, 60.0], max_age=100)
    keyer = GroupKeyer.from_config(config)
    assert keyer.columns == ("sex", "age") and keyer.age_bins == (30.0, 60.0) and keyer.max_age == 100.0
    sibling = keyer.sibling()
    with caplog.at_level(logging.WARNING, logger="fair_trl.groups"):
        assert keyer.key({"sex": "X", "age": 20}) is None
        assert sibling.key({"sex": "Y", "age": 70}) is None
    assert sum("Column 'sex' has an invalid value" in r.getMessage() for r in caplog.records) == 1
    assert keyer.summary()["invalid"]["sex"] == 1 and sibling.summary()["invalid"]["sex"] == 1
    # A resumed keyer restores its warnings in place, so its siblings still share them.
    keyer.load_state_dict({**keyer.summary(), "warned": ["age"]})
    assert sibling.state_dict()["warned"] == ["age"]


def test_domain_key_is_the_one_rule_for_domains():
    from fair_trl.groups import ALL_DOMAINS, UNKNOWN, domain_key

    assert domain_key({"dataset": " ham10000 "}, "dataset") == "ham10000"
    for blank in (None, "", "  ", float("nan")):
        assert domain_key({"dataset": blank}, "dataset") == UNKNOWN
    assert domain_key({}, "dataset") == UNKNOWN
    assert domain_key({"dataset": "ham10000"}, None) == ALL_DOMAINS


# --- column kinds ("name:kind") and the partly-missing policy --------------------------------------


def test_declared_kinds_parse_clinical_column_names():
    # By name, PatientAge and PatientSex are free categories: 34 and 35 would be two groups, "053Y" a third.
    assert column_kind("PatientAge") == "category" and column_kind("PatientSex") == "category"
    keyer = GroupKeyer(["PatientSex:sex", "PatientAge:age"])
    assert keyer.columns == ("PatientSex", "PatientAge")
    assert keyer.kinds == {"PatientSex": "sex", "PatientAge": "age"}
    rows = [
        {"PatientSex": "M", "PatientAge": 34},
        {"PatientSex": "male", "PatientAge": "035Y"},
        {"PatientSex": "F", "PatientAge": "053Y"},
        {"PatientSex": "F", "PatientAge": 0},
    ]
    assert keyer.keys(rows) == [
        "PatientSex=M|PatientAge=a2",
        "PatientSex=M|PatientAge=a2",
        "PatientSex=F|PatientAge=a3",
        None,
    ]
    assert keyer.missing_counts == {"PatientSex": 0, "PatientAge": 1}
    # A kind overrides the name rule both ways: an "age" column read as a category keeps its values.
    assert GroupKeyer(["age:category"]).key({"age": "34"}) == "age=34"


@pytest.mark.parametrize("spec", ["PatientAge:years", "PatientAge:", "sex:Gender"])
def test_unknown_kind_names_the_choices(spec):
    with pytest.raises(ValueError, match=r"unknown kind .*age, sex, category"):
        GroupKeyer([spec])


def test_kind_specs_round_trip_and_mapping():
    keyer = GroupKeyer(["PatientAge:age", "site"], kinds={"site": "category"})
    assert keyer.specs == ["PatientAge:age", "site:category"]
    assert GroupKeyer(keyer.specs).kinds == keyer.kinds
    assert keyer.sibling().kinds == keyer.kinds
    assert parse_columns(["a:AGE", "b"]) == {"a": "age", "b": "category"}
    assert column_names(["PatientAge:age", "sex"]) == ("PatientAge", "sex")
    with pytest.raises(ValueError, match="not a demographic column"):
        GroupKeyer(["age"], kinds={"agee": "age"})
    with pytest.raises(ValueError, match="duplicate"):
        GroupKeyer(["age", "age:age"])


def test_no_columns_means_every_row_unlabeled():
    keyer = GroupKeyer([])
    assert keyer.columns == () and keyer.keys([{"sex": "F", "age": 30}, {}]) == [None, None]
    assert keyer.summary()["rows_without_key"] == 2


def test_partly_missing_rows_are_unlabeled_but_their_known_attribute_still_counts():
    keyer = GroupKeyer(["sex", "age"])
    row = {"sex": "F", "age": None}
    # The training key: none (FairGRPO's latent groups), so missingness makes no small group of its own ...
    assert keyer.key(row) is None
    # ... while the per-attribute metrics still see sex=F.
    assert keyer.attribute("sex", row["sex"]) == "F"


def test_fit_puts_partly_known_rows_in_the_commonest_agreeing_group_of_their_domain():
    keyer = GroupKeyer(["sex", "age"])
    train = [
        ({"sex": "F", "age": 60}, "a"),
        ({"sex": "F", "age": 61}, "a"),
        ({"sex": "F", "age": 20}, "a"),
        ({"sex": "M", "age": 20}, "a"),
        ({"sex": None, "age": 40}, "covid"),  # a release with no sex at all
        ({"sex": None, "age": 70}, "covid"),
    ]
    keyer.fit([row for row, _ in train], [domain for _, domain in train])
    assert keyer.recorded == {"a": ("sex", "age"), "covid": ("age",)}
    # Lacking age, a woman of domain a counts with the commonest complete group of women there ...
    assert keyer.key({"sex": "F", "age": None}, "a") == "sex=F|age=a3"
    assert keyer.key({"sex": None, "age": 18}, "a") == "sex=F|age=a1"  # ties go to the first key
    # ... a domain that records no sex keys by age alone, and nothing agreeing or nothing known is unlabeled.
    assert keyer.key({"sex": None, "age": 45}, "covid") == "age=a2"
    assert keyer.key({"sex": None, "age": 90}, "a") is None
    assert keyer.key({}, "a") is None
    # Without a domain (or before fit) every column counts: partly known rows have no key.
    assert keyer.key({"sex": "F", "age": None}) is None
    assert keyer.sibling().key({"sex": "F", "age": None}, "a") == "sex=F|age=a3"

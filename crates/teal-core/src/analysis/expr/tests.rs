//! The condition language: a table of (condition, result) → verdict, and the errors
//! found at apply time and at run time, with their columns.

use super::*;

fn number(n: f64) -> Value {
    Value::Number(n)
}

#[test]
fn conditions_evaluate_as_argo_users_write_them() {
    let list = Value::List(vec![250.0, 900.0]);
    let table: &[(&str, Value, bool)] = &[
        ("result >= 0.99", number(0.995), true),
        ("result >= 0.99", number(0.98), false),
        ("result < 500", number(499.9), true),
        ("result == 0", number(0.0), true),
        ("result != 0", number(0.0), false),
        ("result[0] < 500", list.clone(), true),
        ("result[-1] < 500", list.clone(), false),
        ("len(result) > 0 && result[0] > 1", list.clone(), true),
        (
            "len(result) > 0 && result[0] > 1",
            Value::List(vec![]),
            false,
        ),
        ("len(result) == 0 || result[0] < 300", list.clone(), true),
        ("result[0] + result[1] > 1000", list.clone(), true),
        ("result * 100 >= 99", number(0.99), true),
        ("!(result > 1)", number(0.5), true),
        ("not (result > 1) and result >= 0", number(0.5), true),
        ("result == true", Value::Bool(true), true),
        ("result", Value::Bool(false), false),
        ("result == \"ok\"", Value::String("ok".into()), true),
        ("result == 'ok'", Value::String("fail".into()), false),
        ("asFloat(result) >= 0.5", Value::String("0.75".into()), true),
        ("asInt(result) == 3", Value::String("3".into()), true),
        ("isNaN(result)", number(f64::NAN), true),
        ("!isNaN(result) && result > 0.9", number(f64::NAN), false),
        ("isInf(result)", number(f64::INFINITY), true),
        ("1e3 > result", number(999.0), true),
    ];
    for (source, value, expected) in table {
        let condition =
            Condition::parse(source, Types::ANY).unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(
            condition.evaluate(value),
            Ok(*expected),
            "{source} for {value:?}"
        );
    }
}

#[test]
fn apply_time_errors_name_the_column() {
    let table: &[(&str, Types, usize, &str)] = &[
        ("result >= ", Types::NUMBER, 11, ""),
        ("result >== 1", Types::NUMBER, 10, ""),
        ("resutl > 1", Types::NUMBER, 1, "resutl"),
        ("result + 1", Types::NUMBER, 1, "true or false"),
        ("result[0] < 1", Types::NUMBER, 1, ""),
        ("len(result) > 0", Types::NUMBER, 1, ""),
        ("foo(result)", Types::NUMBER, 1, "foo"),
        ("0 < result < 1", Types::NUMBER, 12, ""),
        ("(result > 1", Types::NUMBER, 1, ""),
        ("result == \"ok", Types::ANY, 11, ""),
    ];
    for (source, types, column, mentions) in table {
        let error = match Condition::parse(source, *types) {
            Ok(_) => panic!("{source} should not parse for {types}"),
            Err(error) => error,
        };
        assert!(
            error.column >= 1 && error.column <= source.chars().count() + 1,
            "{source}: column {} out of the expression ({error})",
            error.column
        );
        if *column > 1 {
            assert_eq!(error.column, *column, "{source}: {error}");
        }
        assert!(
            error.message.contains(mentions),
            "{source}: {error} does not mention {mentions:?}"
        );
    }
    let long = format!("result > {}", "1".repeat(MAX_LENGTH));
    assert!(Condition::parse(&long, Types::NUMBER).is_err());
    let deep = format!("{}result{} > 0", "(".repeat(100), ")".repeat(100));
    assert!(
        Condition::parse(&deep, Types::NUMBER).is_err(),
        "nesting is bounded"
    );
}

#[test]
fn run_time_type_and_range_problems_are_errors_not_panics() {
    let index = Condition::parse("result[2] < 500", Types::ANY).unwrap();
    let error = index.evaluate(&Value::List(vec![1.0])).unwrap_err();
    assert!(error.message.contains("2"), "{error}");
    let wrong_type = Condition::parse("result > 1", Types::ANY).unwrap();
    assert!(wrong_type.evaluate(&Value::String("x".into())).is_err());
    let not_a_number = Condition::parse("asFloat(result) > 1", Types::ANY).unwrap();
    assert!(not_a_number.evaluate(&Value::String("abc".into())).is_err());
}

#[test]
fn values_survive_json_including_nan() {
    for value in [
        number(0.5),
        number(f64::INFINITY),
        Value::Bool(true),
        Value::String("ok".into()),
        Value::List(vec![1.0, f64::NEG_INFINITY]),
    ] {
        let json = serde_json::to_string(&value).unwrap();
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back, value, "{json}");
    }
    let json = serde_json::to_string(&number(f64::NAN)).unwrap();
    let back: Value = serde_json::from_str(&json).unwrap();
    assert!(matches!(back, Value::Number(n) if n.is_nan()), "{json}");
    let condition: Condition = serde_json::from_str("\"result >= 0.99\"").unwrap();
    assert_eq!(condition.source(), "result >= 0.99");
}

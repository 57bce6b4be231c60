//! placeholder until the fake's tests merge

"""The rule language: primitives, the term library F0..F9 (docs/science.md S3), Rule = Σ θ_r F_r, safe parser."""

from rules.parser import RuleSyntaxError, parse_expression
from rules.primitives import PRIMITIVES
from rules.rule import Rule
from rules.terms import POOLS, TERMS, Term, term

__all__ = ["POOLS", "PRIMITIVES", "TERMS", "Rule", "RuleSyntaxError", "Term", "parse_expression", "term"]

package jsonstream

import (
	"math"
	"strconv"
	"strings"
)

// queryText is what jsonstream reads off a query's text before it sends
// it in a form of its own (cursor mode's DECLARE) or ends it early (a
// cut). It is found by a scanner that follows PostgreSQL's lexer where it
// matters for statement boundaries: quoted strings and identifiers,
// dollar quotes, nested comments, parentheses and semicolons. Where the
// server's reading could depend on its settings (a backslash in a
// standard string, whose meaning standard_conforming_strings decides) or
// on lexer rules the scanner does not follow, it says so (certain is
// false), and the caller sends the text only in a form in which the
// server itself refuses a second statement.
type queryText struct {
	// certain is false when the server might split the text differently
	// from the scanner; the fields below are then guesses.
	certain bool
	// malformed is set when the scanner is sure the server refuses the
	// text: a string, identifier or comment left open, a parenthesis
	// closed that was never opened or left open, or a semicolon inside
	// parentheses.
	malformed bool
	// statements counts the statements with at least one token.
	statements int
	// end is where the first statement ends: before its semicolon, or
	// the text's length.
	end int
	// first is the first statement's first keyword as written, or "(" for
	// a query in parentheses; empty when there is none.
	first string
	// writes is set when a statement of the text may change data: one
	// that is not a SELECT, VALUES, TABLE, WITH or SHOW, or that holds
	// INSERT, UPDATE (but FOR [NO KEY] UPDATE), DELETE or MERGE, or INTO
	// (SELECT … INTO creates a table, also in a WITH or in parentheses).
	writes bool
	// sets is set when a statement of the text begins with SET, RESET or
	// DISCARD: it changes what a new session would not have.
	sets bool
	// locks is set when a statement of the text locks the rows it reads:
	// FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE or FOR KEY SHARE. The
	// server locks each row as it runs past it.
	locks bool
	// params is the highest parameter reference ($1) outside quotes and
	// comments, 0 for none: the count of parameters the server infers.
	params int
	// limited is set when the first statement has LIMIT, OFFSET or FETCH,
	// at any depth: a subquery's counts its rows too.
	limited bool
	// nul is set when the text holds a NUL byte, which ends a string in
	// the protocol's messages: the server reads what follows it as the
	// rest of the message.
	nul bool
	// bounded is set when the text is one read whose result fits in a
	// portal stream's first batch (bounded.go).
	bounded bool
}

// scanQuery scans a query's text; it never allocates.
func scanQuery(q string) queryText {
	t := queryText{certain: true}
	depth := 0
	tokens := 0          // in the current statement
	var prev string      // the keyword just before this token, if a keyword was
	var stmtFirst string // the current statement's first keyword, or "("
	inFirst := true
	b := boundScan{constant: true} // follows the first statement
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
			continue
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			for i < len(q) && q[i] != '\n' && q[i] != '\r' {
				i++
			}
			continue
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			n, ok := skipComment(q, i)
			if !ok {
				t.malformed = true
				return t.done(q, inFirst)
			}
			i = n
			continue
		}
		// Anything else is (part of) a token of the current statement.
		if tokens == 0 {
			t.statements++
		}
		tokens++
		// FOR UPDATE is a lock only when nothing but blanks and comments
		// stand between its words: in (… ORDER BY key) UPDATE, or
		// substring(… FOR 2)) UPDATE, the UPDATE writes.
		last := prev
		prev = ""
		switch {
		case c == '\'':
			if inFirst {
				b.other(0)
			}
			n, ok, sure := skipString(q, i, standardString)
			t.certain = t.certain && sure
			if !ok {
				t.malformed = true
				return t.done(q, inFirst)
			}
			i = n
		case c == '"':
			if inFirst {
				b.other('"')
			}
			n, ok := skipQuoted(q, i, '"')
			if !ok {
				t.malformed = true
				return t.done(q, inFirst)
			}
			i = n
		case c == '$':
			if inFirst {
				b.other(0)
			}
			n, ok, sure := skipDollar(q, i)
			t.certain = t.certain && sure
			if n > i+1 && q[i+1] >= '0' && q[i+1] <= '9' {
				if k, err := strconv.Atoi(q[i+1 : n]); err == nil {
					t.params = max(t.params, k)
				} else {
					t.params = math.MaxInt
				}
			}
			if !ok {
				t.malformed = true
				return t.done(q, inFirst)
			}
			i = n
		case isIdentStart(c):
			j := i + 1
			for j < len(q) && isIdentCont(q[j]) {
				j++
			}
			word := q[i:j]
			if n, isString, ok, sure := prefixedString(q, word, j); isString {
				if inFirst {
					var quote byte // a string
					if j+1 < len(q) && q[j] == '&' && q[j+1] == '"' {
						quote = '"' // U&"…", an identifier
					}
					b.other(quote)
				}
				t.certain = t.certain && sure
				if !ok {
					t.malformed = true
					return t.done(q, inFirst)
				}
				i = n
				break
			}
			if stmtFirst == "" {
				stmtFirst = word
				t.sets = t.sets || oneOf(word, sessionFirstWords)
			}
			t.keyword(word, last, inFirst)
			if inFirst {
				b.word(word, depth)
			}
			prev = word
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9':
			j := i + 1
			for j < len(q) && (isIdentCont(q[j]) || q[j] == '.') && q[j] != '$' {
				j++
			}
			if j < len(q) && q[j] == '$' {
				t.certain = false // PostgreSQL's rules for trailing junk vary by version
			}
			if inFirst {
				b.number(q[i:j])
			}
			i = j
		case c == '(':
			if inFirst {
				b.other(c)
			}
			if inFirst && t.first == "" {
				t.first = "("
			}
			if stmtFirst == "" {
				stmtFirst = "("
			}
			depth++
			i++
		case c == ')':
			if inFirst {
				b.other(c)
			}
			depth--
			if depth < 0 {
				t.malformed = true
				return t.done(q, inFirst)
			}
			i++
		case c == ';':
			tokens-- // not a token of the statement
			if tokens == 0 {
				t.statements--
			}
			if depth > 0 {
				t.malformed = true
				return t.done(q, inFirst)
			}
			if tokens > 0 && !readsOnly(stmtFirst) {
				t.writes = true
			}
			if inFirst && t.statements > 0 {
				b.end()
				t.end, inFirst = i, false
			}
			tokens, prev, stmtFirst = 0, "", ""
			i++
		case c == '\\':
			t.certain = false // no PostgreSQL token starts with a backslash
			i++
		default:
			if inFirst {
				b.other(c)
			}
			i++ // an operator or other punctuation
		}
	}
	if depth != 0 {
		t.malformed = true
	}
	if tokens > 0 && !readsOnly(stmtFirst) {
		t.writes = true
	}
	if inFirst {
		b.end()
	}
	t = t.done(q, inFirst)
	t.bounded = b.bounded(&t)
	return t
}

// sessionFirstWords are the first keywords of the statements that set
// what a new session would not have.
var sessionFirstWords = []string{"set", "reset", "discard"}

// readsOnly reports whether a statement whose first keyword is first (or
// "(") reads, as far as its first keyword tells.
func readsOnly(first string) bool {
	return oneOf(first, readFirstWords)
}

// readFirstWords are the first keywords of the statements that read.
var readFirstWords = []string{"select", "values", "table", "with", "show", "("}

// done completes t once the scan stopped; inFirst says the first
// statement ran to the text's end.
func (t queryText) done(q string, inFirst bool) queryText {
	if inFirst {
		t.end = len(q)
	}
	t.nul = strings.IndexByte(q, 0) >= 0
	if !readsOnly(t.first) {
		t.writes = true
	}
	return t
}

// keyword notes word, a keyword or identifier of a statement that
// follows prev in it; inFirst says the statement is the text's first.
func (t *queryText) keyword(word, prev string, inFirst bool) {
	if inFirst && t.first == "" {
		t.first = word
	}
	switch {
	case strings.EqualFold(word, "insert"), strings.EqualFold(word, "delete"), strings.EqualFold(word, "merge"):
		t.writes = true
	case strings.EqualFold(word, "update"):
		// SELECT … FOR UPDATE and FOR NO KEY UPDATE lock rows; they write
		// nothing that a cut would undo.
		if strings.EqualFold(prev, "for") || strings.EqualFold(prev, "key") {
			t.locks = true
		} else {
			t.writes = true
		}
	case strings.EqualFold(word, "share"):
		if strings.EqualFold(prev, "for") || strings.EqualFold(prev, "key") {
			t.locks = true // FOR SHARE, FOR KEY SHARE
		}
	case strings.EqualFold(word, "into"):
		// SELECT … INTO creates a table, wherever the server finds it (in
		// a WITH's query, in parentheses); INSERT and MERGE write anyway.
		t.writes = true
	case strings.EqualFold(word, "limit"), strings.EqualFold(word, "offset"), strings.EqualFold(word, "fetch"):
		if inFirst {
			t.limited = true
		}
	}
}

// declarable reports whether the first statement is one that DECLARE …
// CURSOR FOR takes: a SELECT, VALUES, TABLE or WITH query, or one in
// parentheses.
func (t queryText) declarable() bool {
	switch {
	case strings.EqualFold(t.first, "select"), strings.EqualFold(t.first, "values"),
		strings.EqualFold(t.first, "table"), strings.EqualFold(t.first, "with"), t.first == "(":
		return true
	}
	return false
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '$'
}

// skipComment returns the index after the /* … */ comment at i, which
// nests as PostgreSQL's does.
func skipComment(q string, i int) (int, bool) {
	depth := 0
	for i < len(q) {
		switch {
		case q[i] == '/' && i+1 < len(q) && q[i+1] == '*':
			depth++
			i += 2
		case q[i] == '*' && i+1 < len(q) && q[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i, true
			}
		default:
			i++
		}
	}
	return i, false
}

// skipQuoted returns the index after the quoted run at i whose quote
// character, doubled, stands for itself: an identifier in double quotes.
func skipQuoted(q string, i int, quote byte) (int, bool) {
	for i++; i < len(q); i++ {
		if q[i] == quote {
			if i+1 < len(q) && q[i+1] == quote {
				i++
				continue
			}
			return i + 1, true
		}
	}
	return i, false
}

// The kinds of string literal, by what a backslash does in them.
const (
	// plainString: nothing (B'…', X'…', U&'…').
	plainString = iota
	// escapeString: it escapes the next byte (E'…').
	escapeString
	// standardString: what standard_conforming_strings says ('…', N'…').
	standardString
)

// skipString returns the index after the string literal at i. A
// standard string is read both ways; when the two readings end it in
// different places the scan is not sure.
//
// In a client encoding such as SJIS, BIG5 or GBK a backslash byte can be
// the second byte of a character, which the server reads as that
// character and not as an escape: a backslash right after a byte above
// 0x7F makes the scan not sure either.
func skipString(q string, i, kind int) (end int, ok, sure bool) {
	if kind == plainString {
		end, ok = stringEnd(q, i, false)
		return end, ok, true
	}
	end, ok = stringEnd(q, i, kind == escapeString)
	body := q[i+1 : min(end, len(q))]
	b := strings.IndexByte(body, '\\')
	if b < 0 {
		return end, ok, true
	}
	for ; b >= 0 && b < len(body); b++ {
		if body[b] == '\\' && b > 0 && body[b-1] >= 0x80 {
			return end, ok, false
		}
	}
	if kind == escapeString {
		return end, ok, true
	}
	alt, altOK := stringEnd(q, i, true)
	return end, ok, alt == end && altOK == ok
}

// stringEnd returns the index after the string literal at i, in which a
// backslash escapes the next byte when escapes is set.
func stringEnd(q string, i int, escapes bool) (int, bool) {
	for i++; i < len(q); i++ {
		switch q[i] {
		case '\\':
			if escapes {
				i++
			}
		case '\'':
			if i+1 < len(q) && q[i+1] == '\'' {
				i++
				continue
			}
			return i + 1, true
		}
	}
	return len(q), false
}

// prefixedString handles a string or identifier whose token starts with
// word: E'…', B'…', X'…', N'…', U&'…' and U&"…". It reports whether there
// is one, and where it ends.
func prefixedString(q, word string, j int) (end int, isString, ok, sure bool) {
	if len(word) != 1 || j >= len(q) {
		return 0, false, false, false
	}
	switch word[0] {
	case 'e', 'E':
		if q[j] == '\'' {
			end, ok, sure = skipString(q, j, escapeString)
			return end, true, ok, sure
		}
	case 'n', 'N':
		if q[j] == '\'' {
			end, ok, sure = skipString(q, j, standardString)
			return end, true, ok, sure
		}
	case 'b', 'B', 'x', 'X':
		if q[j] == '\'' {
			end, ok, sure = skipString(q, j, plainString)
			return end, true, ok, sure
		}
	case 'u', 'U':
		if j+1 < len(q) && q[j] == '&' {
			switch q[j+1] {
			case '\'':
				end, ok, sure = skipString(q, j+1, plainString)
				return end, true, ok, sure
			case '"':
				end, ok = skipQuoted(q, j+1, '"')
				return end, true, ok, true
			}
		}
	}
	return 0, false, false, false
}

// skipDollar returns the index after the token at i, a '$': a parameter
// ($1) or a dollar-quoted string ($tag$…$tag$). Any other '$' makes the
// scan uncertain.
func skipDollar(q string, i int) (end int, ok, sure bool) {
	j := i + 1
	if j < len(q) && q[j] >= '0' && q[j] <= '9' {
		for j < len(q) && q[j] >= '0' && q[j] <= '9' {
			j++
		}
		return j, true, true
	}
	if j < len(q) && isIdentStart(q[j]) {
		for j < len(q) && isIdentStart(q[j]) || j < len(q) && q[j] >= '0' && q[j] <= '9' {
			j++
		}
	}
	if j >= len(q) || q[j] != '$' {
		return i + 1, true, false
	}
	delim := q[i : j+1]
	k := strings.Index(q[j+1:], delim)
	if k < 0 {
		return len(q), false, true
	}
	return j + 1 + k + len(delim), true, true
}

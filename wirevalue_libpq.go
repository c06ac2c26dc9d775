package jsonstream

// The functions of this file are ported from lib/pq's encode.go
// (github.com/lib/pq v1.12.3), so that the wire mode decodes and encodes
// exactly as lib/pq does. lib/pq's license applies to them:
//
// MIT License
//
// Copyright (c) 2011-2013, 'pq' Contributors. Portions Copyright (c) 2011 Blake Mizerany
//
// Permission is hereby granted, free of charge, to any person obtaining a copy
// of this software and associated documentation files (the "Software"), to deal
// in the Software without restriction, including without limitation the rights
// to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
// copies of the Software, and to permit persons to whom the Software is
// furnished to do so, subject to the following conditions:
//
// The above copyright notice and this permission notice shall be included in all
// copies or substantial portions of the Software.
//
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
// IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
// FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
// AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
// LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
// OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
// SOFTWARE.

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"
	"github.com/lib/pq/oid"
)

// parseBytea is lib/pq's parseBytea: a bytea value in the hex format or
// the legacy escape format. Its results are lib/pq's to the nil-ness: an
// empty escape-format text is a nil slice, an empty hex one ("\x") an
// empty slice.
func parseBytea(s []byte) (result []byte, err error) {
	// Hex format.
	if len(s) >= 2 && bytes.Equal(s[:2], []byte("\\x")) {
		s = s[2:] // trim off leading "\\x"
		result = make([]byte, hex.DecodedLen(len(s)))
		_, err := hex.Decode(result, s)
		if err != nil {
			return nil, err
		}
		return result, nil
	}

	// Escape format.
	for len(s) > 0 {
		if s[0] == '\\' {
			// escaped '\\'
			if len(s) >= 2 && s[1] == '\\' {
				result = append(result, '\\')
				s = s[2:]
				continue
			}

			// '\\' followed by an octal number
			if len(s) < 4 {
				return nil, fmt.Errorf("invalid bytea sequence %v", s)
			}
			r, err := strconv.ParseUint(string(s[1:4]), 8, 8)
			if err != nil {
				return nil, fmt.Errorf("could not parse bytea value: %w", err)
			}
			result = append(result, byte(r))
			s = s[4:]
		} else {
			// We hit an unescaped, raw byte.  Try to read in as many as
			// possible in one go.
			i := bytes.IndexByte(s, '\\')
			if i == -1 {
				result = append(result, s...)
				break
			}
			result = append(result, s[:i]...)
			s = s[i:]
		}
	}
	return result, nil
}

// encodeBytea is lib/pq's encodeBytea: the hex format of v.
func encodeBytea(v []byte) (result []byte) {
	result = make([]byte, 2+hex.EncodedLen(len(v)))
	result[0] = '\\'
	result[1] = 'x'
	hex.Encode(result[2:], v)
	return result
}

// parseTime is lib/pq's parseTime for time and timetz values. It takes
// the text as a string where lib/pq copies it into one; time.Parse keeps
// nothing of it.
func parseTime(typ oid.Oid, str string) (time.Time, error) {
	f := "15:04:05"
	if typ == oid.T_timetz {
		f = "15:04:05-07"
		// PostgreSQL just sends the hour if the minute and second is 0:
		//   22:04:59+00
		//   22:04:59+08
		//   22:04:59+08:30
		//   22:04:59+08:30:40
		//   23:00:00.112321+02:12:13
		// So add those to the format string.
		c := strings.Count(str, ":")
		if c > 3 {
			f = "15:04:05-07:00:00"
		} else if c > 2 {
			f = "15:04:05-07:00"
		}
	}

	// Go doesn't parse 24:00, so manually set that to midnight on Jan 2. 24:00
	// is never with subseconds but may have a timezone:
	//   24:00:00
	//   24:00:00+08
	//   24:00:00-08:01:01
	var is2400Time bool
	if strings.HasPrefix(str, "24:00:00") {
		is2400Time = true
		if len(str) > 8 {
			str = "00:00:00" + str[8:]
		} else {
			str = "00:00:00"
		}
	}

	t, err := time.Parse(f, str)
	if err != nil {
		return time.Time{}, errors.New("pq: " + err.Error())
	}
	if is2400Time {
		t = t.Add(24 * time.Hour)
	}
	return t, nil
}

// formatTS is lib/pq's formatTS, the text of a time.Time argument: once
// the bounds of pq.EnableInfinityTs are known (wireinfinity.go), times at
// or past them are "-infinity" and "infinity" as lib/pq compares them;
// before, lib/pq itself formats the time, which is exact in either state.
func formatTS(t time.Time) []byte {
	bounds := infinityTs.bounds.Load()
	if bounds == nil {
		return libpqFormatTS(t)
	}
	// t <= -infinity : ! (t > -infinity)
	if !t.After(bounds.negative) {
		return []byte("-infinity")
	}
	// t >= infinity : ! (!t < infinity)
	if !t.Before(bounds.positive) {
		return []byte("infinity")
	}
	return pq.FormatTimestamp(t)
}

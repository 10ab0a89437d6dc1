// Package suggest finds the word an admin most likely meant: a
// configuration key, a value of an enumeration or a command, misspelt or
// cut short. It backs the "did you mean …?" hints of the configuration
// checks and the command line.
package suggest

import "strings"

// Hint is "; did you mean X?" for the choice X that word most likely
// means (Closest), or "" when there is none: the tail of an error message.
func Hint(word string, choices ...string) string {
	if s := Closest(word, choices); s != "" {
		return "; did you mean " + s + "?"
	}
	return ""
}

// Closest returns the choice that word most likely means, or "" when none
// is close enough to be worth suggesting. Case does not count. A choice
// that starts with word (prod for production) wins over edit distance,
// as long as only one choice does; otherwise the choice with the fewest
// edits wins if that is at most a third of the longer of the two (at
// least 1, at most 4): a long word spelt the way it is said
// (listenAdress) is four edits from the short key it means (listenAddr).
func Closest(word string, choices []string) string {
	w := strings.ToLower(word)
	if w == "" {
		return ""
	}
	var prefixed []string
	for _, c := range choices {
		lc := strings.ToLower(c)
		if lc == w {
			return c
		}
		if len(w) >= 3 && strings.HasPrefix(lc, w) {
			prefixed = append(prefixed, c)
		}
	}
	if len(prefixed) == 1 {
		return prefixed[0]
	}
	best, bestDist := "", -1
	for _, c := range choices {
		d := distance(w, strings.ToLower(c))
		if d > min(max(max(len(c), len(w))/3, 1), 4) {
			continue
		}
		if bestDist < 0 || d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// distance is the Damerau-Levenshtein distance with adjacent
// transpositions (the optimal string alignment variant), on bytes: keys,
// values and commands are ASCII.
func distance(a, b string) int {
	// Three rows: two back for transpositions.
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

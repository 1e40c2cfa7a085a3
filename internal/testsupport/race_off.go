//go:build !race

package testsupport

// raceEnabled is true when the tests run with -race; the server binary is
// then built with -race too (its packages are already compiled that way).
const raceEnabled = false

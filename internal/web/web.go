// Package web is the build server's page: one HTML document and its script,
// embedded in the binary, kept live by the API's Server-Sent Events.
package web

import (
	"embed"
	"html/template"
	"io"
	"io/fs"
	"net/http"
)

//go:embed static index.html
var files embed.FS

var index = template.Must(template.ParseFS(files, "index.html"))

// Page is what the page shows before its script fetches the rest.
type Page struct {
	Hostname  string
	APIPort   int
	CachePort int
	CacheURL  string
	PublicKey string
}

// Render writes the page.
func Render(w io.Writer, p Page) error { return index.Execute(w, p) }

// Static serves /static/ (the script and stylesheet).
func Static() http.Handler {
	sub, _ := fs.Sub(files, "static")
	fileServer := http.StripPrefix("/static/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		fileServer.ServeHTTP(w, r)
	})
}

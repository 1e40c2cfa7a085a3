package cache

import "context"

// AnyAuthenticator accepts a token any of its authenticators accepts, asked
// in order (the server: its API tokens, then upload_token_file's).
type AnyAuthenticator []Authenticator

// AuthenticateUpload implements Authenticator.
func (a AnyAuthenticator) AuthenticateUpload(ctx context.Context, token string) (string, bool, error) {
	for _, auth := range a {
		name, ok, err := auth.AuthenticateUpload(ctx, token)
		if err != nil || ok {
			return name, ok, err
		}
	}
	return "", false, nil
}

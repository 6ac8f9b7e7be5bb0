// A real OpenID provider (the certified `oidc-provider` package) for end-to-end tests.
// It issues JWT access tokens through the client-credentials grant.
//
//   PORT             port to listen on (127.0.0.1)
//   KEY_ID           kid of the signing key generated at start; restart with another to rotate keys
//   KEEP_KEY         optional kid of a second, older key to keep publishing during a rotation
//   AUDIENCE         the `aud` of access tokens (default urn:kv-api)
//   OTHER_AUDIENCE   a second resource (default urn:kv-other): a token request with
//                    `resource=<it>` gets a token for that audience instead
//   SHORT_TOKEN_TTL  lifetime in seconds of the `kv-short` client's tokens (default 2)
//   EXPORT_KEY_FILE  optional: write the signing key (a private JWK) to this file
//   IMPORT_KEY_FILE  optional: sign with the private JWK in this file (its kid included) instead
//                    of generating a key, e.g. to issue tokens under another issuer with it
//
// Clients (secret = "<id>-secret"): kv-full (kv:read kv:write kv:delete), kv-reader (kv:read),
// kv-short (kv:read kv:write kv:delete, tokens living SHORT_TOKEN_TTL seconds).
import { readFileSync, writeFileSync } from 'node:fs';
import { generateKeyPair, exportJWK } from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const audience = process.env.AUDIENCE || 'urn:kv-api';
const otherAudience = process.env.OTHER_AUDIENCE || 'urn:kv-other';
const shortTtl = Number(process.env.SHORT_TOKEN_TTL || 2);
const scopes = 'kv:read kv:write kv:delete kv:admin';

async function signingKey(kid) {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  return { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
}

const keys = process.env.IMPORT_KEY_FILE
  ? [JSON.parse(readFileSync(process.env.IMPORT_KEY_FILE, 'utf8'))]
  : [await signingKey(process.env.KEY_ID || 'key-1')];
if (process.env.KEEP_KEY) keys.push(await signingKey(process.env.KEEP_KEY));
if (process.env.EXPORT_KEY_FILE) writeFileSync(process.env.EXPORT_KEY_FILE, JSON.stringify(keys[0]));

const client = (id, scope) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  scope,
});

const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [client('kv-full', scopes), client('kv-reader', 'kv:read'), client('kv-short', scopes)],
  scopes: scopes.split(' '),
  jwks: { keys },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, requester) => ({
        audience: resource === otherAudience ? otherAudience : audience,
        scope: scopes,
        accessTokenFormat: 'jwt',
        accessTokenTTL: requester.clientId === 'kv-short' ? shortTtl : 300,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer} with keys ${keys.map((k) => k.kid).join(',')}`);
});

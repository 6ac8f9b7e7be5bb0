// A real OpenID provider (the certified `oidc-provider` package) for end-to-end tests.
// It issues JWT access tokens through the client-credentials grant.
//
//   PORT       port to listen on (127.0.0.1)
//   KEY_ID     kid of the signing key generated at start; restart with another to rotate keys
//   KEEP_KEY   optional kid of a second, older key to keep publishing during a rotation
//   AUDIENCE   the `aud` of access tokens (default urn:kv-api)
//
// Clients (secret = "<id>-secret"): kv-full (kv:read kv:write kv:delete), kv-reader (kv:read).
import { generateKeyPair, exportJWK } from 'jose';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT || 0);
const audience = process.env.AUDIENCE || 'urn:kv-api';
const scopes = 'kv:read kv:write kv:delete';

async function signingKey(kid) {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  return { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
}

const keys = [await signingKey(process.env.KEY_ID || 'key-1')];
if (process.env.KEEP_KEY) keys.push(await signingKey(process.env.KEEP_KEY));

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
  clients: [client('kv-full', scopes), client('kv-reader', 'kv:read')],
  scopes: scopes.split(' '),
  jwks: { keys },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        audience,
        scope: scopes,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 300,
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer} with keys ${keys.map((k) => k.kid).join(',')}`);
});

// oidc-provider on loopback, configured for tower-oauth2's interop tests.
//
// Started by tests/interop.rs as `node server.mjs` with PORT=0 (0 = any free
// port). Listens on 127.0.0.1 only, prints `READY <port>` on stdout once it
// accepts requests, then nothing else on stdout. Exits when stdin closes or on
// SIGTERM. Clients, endpoints and test helpers are listed in README.md.

import { createPublicKey, generateKeyPairSync, randomBytes, sign, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

import Provider, { errors } from 'oidc-provider';

// stdout carries the READY line and nothing else, but oidc-provider prints its
// "you SHOULD change this default" notices with console.info: send those (and
// anything else that logs) to stderr.
console.log = console.error;
console.info = console.error;

const AUDIENCE = 'urn:tower-oauth2:api';
const RESOURCE_SCOPES = 'api.read api.write';
const REDIRECT_URI = 'http://127.0.0.1/callback';

// ---------------------------------------------------------------- clients --

const ccClient = (client_id, client_secret, token_endpoint_auth_method, scope) => ({
  client_id,
  client_secret,
  token_endpoint_auth_method,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope,
});

// private_key_jwt clients (RFC 7523 §2.2): each registers the public half of
// a test key from ../keys and the one algorithm it must sign with.
const publicJwk = (file, kid) => ({
  ...createPublicKey(readFileSync(new URL(`../keys/${file}`, import.meta.url))).export({ format: 'jwk' }),
  ...(kid ? { kid } : {}),
});
const jwtClient = (client_id, alg, keys) => ({
  client_id,
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: alg,
  jwks: { keys },
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'api.read api.write',
});

// A workload identity issuer (as a Kubernetes API server mints projected
// service-account tokens): its key signs the assertions GET
// /test/assertion hands out, and `jwt-callback` trusts it.
const workload = generateKeyPairSync('ec', { namedCurve: 'P-256' });

const clients = [
  jwtClient('jwt-rs256', 'RS256', [publicJwk('rsa.pem', 'rsa-1')]),
  jwtClient('jwt-ps256', 'PS256', [publicJwk('rsa.pem', 'rsa-1')]),
  jwtClient('jwt-es256', 'ES256', [publicJwk('ec.pem')]),
  jwtClient('jwt-callback', 'ES256', [{ ...workload.publicKey.export({ format: 'jwk' }), kid: 'workload' }]),
  ccClient('cc-basic', 'basic-secret', 'client_secret_basic', 'api.read api.write'),
  ccClient('cc-post', 'post-secret', 'client_secret_post', 'api.read api.write'),
  // Every character that needs form-urlencoding in a Basic header. No
  // non-ASCII: oidc-provider holds client_secret to RFC 6749's VSCHAR
  // (%x20-7E). A secret with `é` is refused as invalid_client_metadata when
  // the client is loaded, and in a Basic header as invalid_request.
  ccClient('cc-special', 'p@ss:w/rd+&=% ~x', 'client_secret_basic', 'api.read'),
  ccClient('cc-short', 'short-secret', 'client_secret_basic', 'api.read api.write'),
  {
    client_id: 'web-app',
    client_secret: 'web-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT_URI],
    scope: 'openid offline_access api.read api.write',
  },
  // A native app (RFC 8252): public, PKCE, a loopback redirect on any port.
  {
    client_id: 'native-app',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [REDIRECT_URI],
    scope: 'openid offline_access api.read api.write',
  },
  // Only authenticates to the introspection endpoint.
  {
    client_id: 'resource-server',
    client_secret: 'rs-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
];

// ------------------------------ token exchange and JWT bearer: clients --
//
// Grants registered with provider.registerGrantType further down (the block
// "token exchange and JWT bearer: grants"). Each client comes in two: a
// normal one and a `-short` one whose tokens live 2 s.

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const grantTTL = (clientId) => (clientId.endsWith('-short') ? 2 : 300);

const exchangeClient = (client_id, client_secret) => ({
  client_id,
  client_secret,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: [TOKEN_EXCHANGE],
  response_types: [],
  redirect_uris: [],
  scope: 'api.read api.write',
});
// The JWT bearer clients trust assertions signed by the test keys rsa.pem
// (kid rsa-1) and ec.pem (kid ec-1); iss must be the client id.
const jwtBearerClient = (client_id, client_secret) => ({
  client_id,
  client_secret,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: [JWT_BEARER],
  response_types: [],
  redirect_uris: [],
  scope: 'api.read api.write',
  jwks: { keys: [publicJwk('rsa.pem', 'rsa-1'), publicJwk('ec.pem', 'ec-1')] },
});
clients.push(
  exchangeClient('te-client', 'te-secret'),
  exchangeClient('te-short', 'te-short-secret'),
  jwtBearerClient('jb-client', 'jb-secret'),
  jwtBearerClient('jb-short', 'jb-short-secret'),
);

const accessTokenTTL = (clientId) => (['cc-short', 'device-short', 'mtls-short'].includes(clientId) ? 2 : 300);

// ---------------------------------------------------------------- storage --

// The default in-memory adapter is a small LRU, so tokens could vanish under
// load. This one keeps everything for the life of the process. Keys are
// `<Model>:<id>`; payloads are stored as given (oidc-provider handles expiry
// itself by checking `exp` on what `find` returns).
const store = new Map();

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  * entries() {
    const prefix = `${this.model}:`;
    for (const [key, payload] of store) if (key.startsWith(prefix)) yield payload;
  }

  async upsert(id, payload, _expiresIn) {
    store.set(this.key(id), { ...payload });
  }

  async find(id) {
    return store.get(this.key(id));
  }

  async findByUserCode(userCode) {
    for (const payload of this.entries()) if (payload.userCode === userCode) return payload;
    return undefined;
  }

  async findByUid(uid) {
    for (const payload of this.entries()) if (payload.uid === uid) return payload;
    return undefined;
  }

  async consume(id) {
    const payload = store.get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  // Called for every model when a grant is revoked (e.g. a rotated refresh
  // token is reused): everything issued under that grant goes.
  async revokeByGrantId(grantId) {
    for (const [key, payload] of store) if (payload.grantId === grantId) store.delete(key);
  }
}

// Test helper: forget every grant and token issued to a client.
const ISSUED_MODELS = /^(Grant|AuthorizationCode|AccessToken|RefreshToken|ClientCredentials|DeviceCode|BackchannelAuthenticationRequest):/;
function revokeClient(clientId) {
  let revoked = 0;
  for (const [key, payload] of store) {
    if (payload.clientId === clientId && ISSUED_MODELS.test(key)) {
      store.delete(key);
      revoked += 1;
    }
  }
  return revoked;
}

// ---------------------------------------------------------------- counters --

const newStats = () => ({
  token_requests: {},
  token_requests_by_grant: { client_credentials: 0, refresh_token: 0, authorization_code: 0 },
});
let stats = newStats();

// The client id the request presented, authenticated or not: the Basic
// header's user part (form-urlencoded, decoded the way oidc-provider does),
// else the body's client_id.
function presentedClientId(ctx) {
  const [scheme, value] = (ctx.get('authorization') || '').split(' ');
  if (scheme?.toLowerCase() === 'basic' && value) {
    const decoded = Buffer.from(value, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const id = colon === -1 ? decoded : decoded.slice(0, colon);
    try {
      return decodeURIComponent(id.replace(/\+/g, '%20')) || 'unknown';
    } catch {
      return id || 'unknown';
    }
  }
  return ctx.oidc?.params?.client_id || 'unknown';
}

// ---------------------------------------------- PAR, RAR and revocation --
// Pushed authorization requests (RFC 9126, on by default in oidc-provider,
// named here) and rich authorization requests (RFC 9396) with one type of
// our own, `tower-oauth2:test`, whose details need a string `action`. The
// details granted travel request -> grant -> code -> access and refresh
// tokens -> introspection unchanged. Revocation (RFC 7009) is configured in
// `features` below.
const RAR_TYPE = 'tower-oauth2:test';
// oidc-provider allows a client only the types it registered.
for (const client of clients) {
  if (['web-app', 'cc-basic'].includes(client.client_id)) client.authorization_details_types = [RAR_TYPE];
}
const parRarFeatures = {
  pushedAuthorizationRequests: { enabled: true, requirePushedAuthorizationRequests: false },
  richAuthorizationRequests: {
    enabled: true,
    types: {
      [RAR_TYPE]: {
        validate: async (_ctx, detail) => {
          if (typeof detail.action !== 'string') throw new errors.InvalidAuthorizationDetails('`action` must be a string');
        },
      },
    },
    authorizationDetailsForGrantSource: async (ctx) => ctx.oidc.grant?.rar,
    // From the code or refresh token it comes from; for client_credentials
    // (no source) the request's own parameter.
    authorizationDetailsForAccessToken: async (ctx, _token, source) => (source
      ? source.rar
      : JSON.parse(ctx.oidc.params.authorization_details)),
    authorizationDetailsForIntrospection: async (_ctx, token) => token.rar,
  },
};

// GET /test/authorize?url=<authorization URL>&redirect_uri=<uri>: a person
// opening the URL (logged in and consenting by autoApprove); answers the
// callback URL the browser was sent to, without following it.
async function authorizeUrl(url) {
  const start = new URL(url.searchParams.get('url') || '');
  const redirectUri = url.searchParams.get('redirect_uri');
  if (start.origin !== issuer || !redirectUri) throw new FlowError(400, { error: 'invalid_request', error_description: 'url on this server and redirect_uri are required' });
  const callback = await browse(start.href, (next) => `${next.origin}${next.pathname}` === redirectUri);
  return { callback: callback.href };
}
// ------------------------------------------ end PAR, RAR and revocation --

// ------------------------------------------------- device authorization --
// RFC 8628: `device-cli`, a public client, asks at /device/auth; the person's
// side is oidc-provider's own user code pages at /device, driven by
// POST /test/device?user_code=<code>&action=approve|deny (below).
// `device-short` is the same with 2 s access tokens (accessTokenTTL).
for (const client_id of ['device-cli', 'device-short']) {
  clients.push({
    client_id,
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
    scope: 'openid offline_access api.read api.write',
  });
}
const deviceFeatures = { deviceFlow: { enabled: true } };

// A person with a browser: opens /device, enters the code, and confirms
// (logged in and consenting by autoApprove) or aborts. Answers the status of
// the last page and whether it was the success page.
async function approveDevice(url) {
  const userCode = url.searchParams.get('user_code');
  const action = url.searchParams.get('action') || 'approve';
  if (!userCode) throw new FlowError(400, { error: 'invalid_request', error_description: 'user_code is required' });
  const jar = new Map();
  const send = async (target, init = {}) => {
    const cookie = [...jar].map(([name, value]) => `${name}=${value}`).join('; ');
    const res = await fetch(target, { ...init, redirect: 'manual', headers: { ...(init.headers || {}), ...(cookie ? { cookie } : {}) } });
    for (const setCookie of res.headers.getSetCookie()) {
      const [pair] = setCookie.split(';');
      const eq = pair.indexOf('=');
      jar.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    return res;
  };
  const page = await (await send(`${issuer}/device`)).text();
  const xsrf = /name="xsrf" value="([^"]+)"/.exec(page)?.[1];
  if (!xsrf) throw new FlowError(500, { error: 'server_error', error_description: 'no xsrf in the user code page' });
  const form = new URLSearchParams({ xsrf, user_code: userCode, ...(action === 'deny' ? { abort: 'yes' } : { confirm: 'yes' }) });
  let res = await send(`${issuer}/device`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString() });
  for (let hop = 0; hop < 10 && res.headers.get('location'); hop += 1) {
    res = await send(new URL(res.headers.get('location'), issuer).href);
  }
  const text = await res.text();
  return { status: res.status, success: /Sign-in Success/i.test(text) };
}
// --------------------------------------------- end device authorization --

// -------------------------------------------------------------- provider --

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

// ------------------------------------------------------------------ mTLS --
// RFC 8705, only when MTLS_DIR names a directory of PEM files the test made:
// server.pem and server.key (this listener's certificate, for 127.0.0.1),
// client-ca.pem (the CA that issues `tls_client_auth` certificates) and
// self-signed.pem (the certificate `mtls-self-signed` registered). A second
// listener, https on 127.0.0.1, asks every client for a certificate and takes
// any (oidc-provider judges it); discovery names it in mtls_endpoint_aliases.
// oidc-provider does not terminate TLS: getCertificate reads the peer
// certificate from the request's socket.
const PKI_SUBJECT = 'CN=mtls-pki';
let mtls = null;
if (process.env.MTLS_DIR) {
  const file = (name) => readFileSync(`${process.env.MTLS_DIR}/${name}`);
  const tlsServer = https.createServer({
    cert: file('server.pem'),
    key: file('server.key'),
    ca: file('client-ca.pem'),
    requestCert: true,
    rejectUnauthorized: false,
  });
  await new Promise((resolve, reject) => {
    tlsServer.once('error', reject);
    tlsServer.listen(0, '127.0.0.1', resolve);
  });
  const origin = `https://127.0.0.1:${tlsServer.address().port}`;
  const selfSigned = new X509Certificate(file('self-signed.pem'));
  const mtlsClient = (client_id, token_endpoint_auth_method, extra) => ({
    client_id,
    token_endpoint_auth_method,
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api.read api.write',
    ...extra,
  });
  clients.push(
    mtlsClient('mtls-self-signed', 'self_signed_tls_client_auth', {
      jwks: { keys: [{ ...selfSigned.publicKey.export({ format: 'jwk' }), x5c: [selfSigned.raw.toString('base64')] }] },
    }),
    mtlsClient('mtls-pki', 'tls_client_auth', { tls_client_auth_subject_dn: PKI_SUBJECT }),
    mtlsClient('mtls-short', 'tls_client_auth', { tls_client_auth_subject_dn: PKI_SUBJECT }),
  );
  mtls = { server: tlsServer, origin };
}

// The certificate the client presented on this request's connection, if any
// (none on the plain http listener).
function peerCertificate(ctx) {
  const { socket } = ctx.req;
  if (typeof socket.getPeerCertificate !== 'function') return undefined;
  const peer = socket.getPeerCertificate();
  return peer && peer.raw ? new X509Certificate(peer.raw) : undefined;
}

const mtlsConfiguration = mtls ? {
  clientAuthMethods: ['client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt', 'none', 'tls_client_auth', 'self_signed_tls_client_auth'],
  discovery: {
    mtls_endpoint_aliases: {
      token_endpoint: `${mtls.origin}/token`,
      revocation_endpoint: `${mtls.origin}/token/revocation`,
      introspection_endpoint: `${mtls.origin}/token/introspection`,
    },
  },
} : {};
const mtlsFeatures = mtls ? {
  mTLS: {
    enabled: true,
    certificateBoundAccessTokens: true,
    selfSignedTlsClientAuth: true,
    tlsClientAuth: true,
    getCertificate: (ctx) => peerCertificate(ctx)?.toString(),
    // Verified against client-ca.pem by the TLS listener.
    certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
    certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
      && peerCertificate(ctx)?.subject.split('\n').join(',') === expected,
  },
} : {};
// ---------------------------------------------------------------- end mTLS --

// A signing key of our own (ID tokens), instead of the provider's
// development-only quick-start keys and their warning.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'interop', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  ...mtlsConfiguration,
  clients,
  adapter: MapAdapter,
  jwks: { keys: [signingKey] },
  cookies: { keys: ['interop-test-only'] },
  findAccount: async (_ctx, accountId) => ({ accountId, claims: async () => ({ sub: accountId }) }),
  scopes: ['openid', 'offline_access', 'api.read', 'api.write'],
  // Interactions (login, consent) are answered by autoApprove() below.
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  // JSON instead of an HTML page, so /test/code can say what went wrong.
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
  // PKCE (S256, the only method oidc-provider 9 knows) for every client,
  // confidential ones included.
  pkce: { required: () => true },
  rotateRefreshToken: true,
  // The default issues one only when offline_access was granted.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    // Resource-bound access tokens take getResourceServerInfo's accessTokenTTL;
    // these are the fallbacks.
    AccessToken: (_ctx, _token, client) => accessTokenTTL(client.clientId),
    ClientCredentials: (_ctx, _token, client) => accessTokenTTL(client.clientId),
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 86400,
    Grant: 86400,
    Interaction: 600,
    Session: 86400,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // DPoP (RFC 9449) with nonces: a request without a proof is served as
    // before; one with a proof must carry the server's current nonce, and
    // gets a token bound to the proof's key.
    dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
    // The resource server may introspect any token; another client only its
    // own. (The default lets any confidential client introspect anything.)
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => client.clientId === 'resource-server' || client.clientId === token.clientId,
    },
    // A client may revoke its own tokens (the default, minus its warning).
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => {
        if (token.clientId !== client.clientId) throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        return true;
      },
    },
    // Without resource indicators client_credentials tokens carry no API
    // scopes at all: every access token here is for AUDIENCE.
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => AUDIENCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => {
        if (resourceIndicator !== AUDIENCE) throw new errors.InvalidTarget();
        // oidc-provider refuses a scope from `scopes` above that the client is
        // not allowed, but silently drops one it does not know (api.admin).
        // OfficeRnD refuses both with invalid_scope; so does this server.
        if (ctx.oidc.params.grant_type === 'client_credentials') {
          const allowed = new Set((client.scope || '').split(' '));
          const refused = (ctx.oidc.params.scope || '').split(' ').filter((s) => s && !allowed.has(s));
          if (refused.length) throw new errors.InvalidScope('requested scope is not allowed', refused.join(' '));
        }
        return {
          scope: RESOURCE_SCOPES,
          audience: AUDIENCE,
          accessTokenTTL: accessTokenTTL(client.clientId),
          accessTokenFormat: 'opaque',
        };
      },
    },
    ...parRarFeatures,
    ...deviceFeatures,
    ...mtlsFeatures,
  },
});

// Counts every POST to the token endpoint, failed ones included. Runs around
// the provider's own routes; its error handler has answered by the time
// next() returns, and ctx.oidc.params is set unless the body was unreadable.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.method === 'POST' && ctx.path === '/token') {
    const clientId = presentedClientId(ctx);
    const grantType = ctx.oidc?.params?.grant_type || 'unknown';
    stats.token_requests[clientId] = (stats.token_requests[clientId] || 0) + 1;
    stats.token_requests_by_grant[grantType] = (stats.token_requests_by_grant[grantType] || 0) + 1;
  }
});

// ------------------------------- token exchange and JWT bearer: grants --
//
// Both issue an opaque access token for AUDIENCE (the resource server's
// introspection accepts it like any other), living grantTTL(client) seconds.

// (An import, hoisted like the ones at the top; kept here with its users.)
import { constants, verify } from 'node:crypto';

const asList = (value) => (value === undefined ? [] : [].concat(value));

async function issueForAudience(ctx, scopeParam) {
  const { client } = ctx.oidc;
  const allowed = new Set((client.scope || '').split(' '));
  const requested = (scopeParam || 'api.read').split(' ').filter(Boolean);
  const refused = requested.filter((s) => !allowed.has(s));
  if (refused.length) throw new errors.InvalidScope('requested scope is not allowed', refused.join(' '));
  const token = new provider.ClientCredentials({
    client,
    scope: requested.join(' '),
    // Set here: ttl.ClientCredentials above knows only the cc-* clients.
    expiresIn: grantTTL(client.clientId),
  });
  token.resourceServer = new provider.ResourceServer(AUDIENCE, {
    scope: RESOURCE_SCOPES,
    audience: AUDIENCE,
    accessTokenTTL: grantTTL(client.clientId),
    accessTokenFormat: 'opaque',
  });
  ctx.oidc.entity('ClientCredentials', token);
  const value = await token.save();
  return { value, token };
}

// RFC 8693: the subject must be an access token this server issued and that
// is still valid; the audience (or resource) must be AUDIENCE.
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { params } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('subject_token is required');
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens are accepted as subject_token_type');
  }
  if (params.actor_token && !params.actor_token_type) throw new errors.InvalidRequest('actor_token_type is required');
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens can be requested');
  }
  const subject = (await provider.AccessToken.find(params.subject_token))
    || (await provider.ClientCredentials.find(params.subject_token));
  if (!subject || !subject.isValid) throw new errors.InvalidGrant('subject_token is invalid or expired');
  const targets = [...asList(params.audience), ...asList(params.resource)];
  if (targets.some((t) => t !== AUDIENCE)) throw new errors.InvalidTarget('unknown audience');
  const { value, token } = await issueForAudience(ctx, params.scope);
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'audience', 'resource', 'scope'], ['audience', 'resource']);

// RFC 7523 §2.1: the assertion is signed by a key in the client's jwks, its
// iss is the client, its aud this server's token endpoint or issuer, and its
// jti is used once.
const seenJti = new Set();
provider.registerGrantType(JWT_BEARER, async (ctx) => {
  const { client, params } = ctx.oidc;
  const parts = String(params.assertion || '').split('.');
  if (parts.length !== 3) throw new errors.InvalidGrant('assertion is not a JWT');
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    throw new errors.InvalidGrant('assertion is not a JWT');
  }
  const kty = { RS256: 'RSA', PS256: 'RSA', ES256: 'EC' }[header.alg];
  const jwk = (client.jwks?.keys || []).find((k) => k.kty === kty && (!header.kid || k.kid === header.kid));
  if (!jwk) throw new errors.InvalidGrant('no key of the client verifies the assertion');
  const key = createPublicKey({ key: jwk, format: 'jwk' });
  const options = {
    RS256: { key },
    PS256: { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 },
    ES256: { key, dsaEncoding: 'ieee-p1363' },
  }[header.alg];
  const input = Buffer.from(`${parts[0]}.${parts[1]}`);
  if (!verify('sha256', input, options, Buffer.from(parts[2], 'base64url'))) {
    throw new errors.InvalidGrant('the assertion signature is invalid');
  }
  const now = Math.floor(Date.now() / 1000);
  const audiences = asList(claims.aud);
  if (claims.iss !== client.clientId) throw new errors.InvalidGrant('iss is not the client');
  if (!claims.sub) throw new errors.InvalidGrant('sub is missing');
  if (!audiences.includes(`${issuer}/token`) && !audiences.includes(issuer)) throw new errors.InvalidGrant('aud is not this server');
  if (typeof claims.exp !== 'number' || claims.exp <= now) throw new errors.InvalidGrant('the assertion has expired');
  if (!claims.jti || seenJti.has(claims.jti)) throw new errors.InvalidGrant('jti is missing or was used before');
  seenJti.add(claims.jti);
  const { value, token } = await issueForAudience(ctx, params.scope);
  ctx.body = {
    access_token: value,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope: token.scope,
  };
}, ['assertion', 'scope']);

// ----------------------------------------------------------- test helpers --

// The interaction page: logs in `user-1`, then grants whatever the client
// asked for, without showing anything.
async function autoApprove(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    await provider.interactionFinished(req, res, { login: { accountId: 'user-1' } }, { mergeWithLastSubmission: false });
    return;
  }
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
  const missing = details.prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  for (const detail of missing.rar || []) grant.addRar(detail);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

class FlowError extends Error {
  constructor(status, body) {
    super(body.error_description || body.error);
    this.status = status;
    this.body = body;
  }
}

// Drives /auth like a browser (cookie jar, redirects) until the redirect to
// the client's redirect_uri, and returns the code from it.
async function authorizationCode(query) {
  const params = new URLSearchParams(query);
  params.set('response_type', 'code');
  if (!params.has('state')) params.set('state', 'interop');
  // Without prompt=consent oidc-provider drops offline_access from the
  // request; the refresh token would then live only as long as the session.
  if (!params.has('prompt') && (params.get('scope') || '').split(' ').includes('offline_access')) {
    params.set('prompt', 'consent');
  }
  const redirectUri = params.get('redirect_uri');
  const callback = await browse(`${issuer}/auth?${params}`, (next) => redirectUri && `${next.origin}${next.pathname}` === redirectUri);
  const code = callback.searchParams.get('code');
  if (!code) throw new FlowError(400, Object.fromEntries(callback.searchParams));
  return code;
}

// A browser with a cookie jar: follows the provider's redirects (login and
// consent are answered by autoApprove) until one leaves for the client's
// redirect URI (`isCallback`), and returns that URL without following it.
async function browse(start, isCallback) {
  const jar = new Map();
  let url = start;
  for (let hop = 0; hop < 10; hop += 1) {
    const cookie = [...jar].map(([name, value]) => `${name}=${value}`).join('; ');
    const res = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const setCookie of res.headers.getSetCookie()) {
      const [pair] = setCookie.split(';');
      const eq = pair.indexOf('=');
      jar.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    const location = res.headers.get('location');
    if (!location) {
      const text = await res.text();
      let body;
      try { body = JSON.parse(text); } catch { body = { error: 'server_error', error_description: text }; }
      throw new FlowError(400, body);
    }
    const next = new URL(location, url);
    if (isCallback(next)) return next;
    url = next.href;
  }
  throw new FlowError(500, { error: 'server_error', error_description: 'too many redirects in the authorization flow' });
}

// What a person does with the URL a native app prints: open it, log in,
// consent, and let the browser land on the app's loopback redirect URI.
async function openInBrowser(authorizationUrl) {
  const start = new URL(authorizationUrl);
  if (start.origin !== issuer) throw new FlowError(400, { error: 'invalid_request', error_description: 'not this server' });
  const callback = await browse(start.href, (next) => next.origin !== issuer);
  const res = await fetch(callback.href);
  await res.text();
  return { callback_status: res.status };
}

// A fresh ES256 client assertion for `clientId`, signed by the workload
// issuer, for the token endpoint of this server.
function workloadAssertion(clientId) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const input = `${b64({ alg: 'ES256', typ: 'JWT', kid: 'workload' })}.${b64({
    iss: clientId,
    sub: clientId,
    aud: `${issuer}/token`,
    jti: randomBytes(16).toString('base64url'),
    iat: now,
    exp: now + 60,
  })}`;
  const signature = sign('sha256', Buffer.from(input), { key: workload.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${input}.${signature.toString('base64url')}`;
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

// Test helpers first; everything else is oidc-provider's.
const providerCallback = provider.callback();
async function handle(req, res) {
  const url = new URL(req.url, issuer);
  const route = `${req.method} ${url.pathname}`;
  try {
    switch (route) {
      case 'GET /test/stats':
        return json(res, 200, stats);
      case 'POST /test/reset':
        stats = newStats();
        return json(res, 200, stats);
      case 'GET /test/assertion': {
        const clientId = url.searchParams.get('client_id');
        if (!clientId) return json(res, 400, { error: 'invalid_request', error_description: 'client_id is required' });
        res.writeHead(200, { 'content-type': 'application/jwt', 'cache-control': 'no-store' });
        return res.end(`${workloadAssertion(clientId)}\n`);
      }
      case 'GET /test/code':
        return json(res, 200, { code: await authorizationCode(url.searchParams) });
      case 'GET /test/authorize':
        return json(res, 200, await authorizeUrl(url));
      case 'GET /test/browse':
        return json(res, 200, await openInBrowser(url.searchParams.get('url') || ''));
      case 'POST /test/revoke-grants': {
        const clientId = url.searchParams.get('client_id');
        if (!clientId) return json(res, 400, { error: 'invalid_request', error_description: 'client_id is required' });
        return json(res, 200, { client_id: clientId, revoked: revokeClient(clientId) });
      }
      case 'POST /test/device':
        return json(res, 200, await approveDevice(url));
      default:
        if (url.pathname.startsWith('/interaction/')) return await autoApprove(req, res);
        return providerCallback(req, res);
    }
  } catch (err) {
    if (err instanceof FlowError) return json(res, err.status, err.body);
    process.stderr.write(`interop server: ${err.stack || err}\n`);
    return json(res, 500, { error: 'server_error', error_description: String(err.message || err) });
  }
}
server.on('request', handle);
mtls?.server.on('request', handle);

// ------------------------------------------------------------- lifecycle --

// The harness holds our stdin open; when it goes away (it dropped us, or
// died), so do we. SIGTERM too. SIGINT keeps Node's default (exit).
const exit = () => process.exit(0);
process.stdin.on('end', exit);
process.stdin.on('close', exit);
process.stdin.on('error', exit);
process.stdin.resume();
process.on('SIGTERM', exit);

process.stdout.write(`READY ${port}\n`);

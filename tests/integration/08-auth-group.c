/*
 * 08-auth-group: the Auth and Group gRPC services of the real logic binary,
 * on a real MariaDB, called through im_rpc_call_sync.
 *
 * Usage (ctest passes it): test_08_auth_group <logic binary>
 */
#include <ctype.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "im.pb-c.h"
#include "im_jwt.h"
#include "im_rpc.h"
#include "im_test.h"
#include "im_time.h"
#include "it_chat.h"
#include "it_env.h"
#include "it_logic.h"

#define SECRET IT_LOGIC_SECRET
#define TIMEOUT_MS 10000

static const char *logic_bin;
static char log_path[64]; /* of the run without a secret */
static it_logic_t lg = {.tag = "it08"};

/* Runs the logic binary with args (NULL-terminated), its stderr to log_path. */
static pid_t spawn_logic(char *const *args)
{
    pid_t pid = fork();

    if (pid == 0) {
        char queue[64];

        if (freopen(log_path, "w", stderr) == NULL)
            _exit(126);
        snprintf(queue, sizeof(queue), "it08.%d", (int)getppid());
        setenv("IM_QUEUE", queue, 1);
        unsetenv("IM_JWT_SECRET");
        execv(logic_bin, args);
        _exit(127);
    }
    return pid;
}

/* Method numbers, in proto/im.proto order. */
enum { SIGNUP, LOGIN, VERIFY };
enum { CREATE, JOIN, LEAVE, MEMBERS, MINE };

static im_rpc_code_t signup(const char *user, const char *pass, uint64_t *id, char *msg,
                            size_t msglen)
{
    Im__V1__RegisterRequest req = IM__V1__REGISTER_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    im_rpc_code_t code;

    req.username = (char *)user;
    req.password = (char *)pass;
    code = it_logic_call(&lg, &im__v1__auth__descriptor, SIGNUP, &req.base, &resp, msg, msglen);
    if (code == IM_RPC_OK) {
        *id = ((Im__V1__RegisterResponse *)resp)->user_id;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return code;
}

static im_rpc_code_t login(const char *user, const char *pass, Im__V1__LoginResponse **out,
                           char *msg, size_t msglen)
{
    Im__V1__LoginRequest req = IM__V1__LOGIN_REQUEST__INIT;

    req.username = (char *)user;
    req.password = (char *)pass;
    return it_logic_call(&lg, &im__v1__auth__descriptor, LOGIN, &req.base, (ProtobufCMessage **)out,
                         msg, msglen);
}

static im_rpc_code_t verify(const char *token, char *msg, size_t msglen,
                            Im__V1__VerifyTokenResponse **out)
{
    Im__V1__VerifyTokenRequest req = IM__V1__VERIFY_TOKEN_REQUEST__INIT;

    req.token = (char *)token;
    return it_logic_call(&lg, &im__v1__auth__descriptor, VERIFY, &req.base,
                         (ProtobufCMessage **)out, msg, msglen);
}

TEST(no_secret_without_dev_refuses_to_start)
{
    char *args[] = {(char *)logic_bin, "--grpc-listen", "127.0.0.1:0", NULL};
    char line[1024];
    bool said_why = false;
    int status;
    pid_t pid = spawn_logic(args);
    FILE *f;

    ASSERT_GT(pid, 0);
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_NE(WEXITSTATUS(status), 0);
    f = fopen(log_path, "r");
    ASSERT_NOT_NULL(f);
    while (fgets(line, sizeof(line), f) != NULL)
        said_why |= strstr(line, "--jwt-secret") != NULL && strstr(line, "--dev") != NULL;
    fclose(f);
    ASSERT_TRUE(said_why);
}

TEST(signup_validates_and_rejects_duplicates)
{
    char user[40], msg[256];
    uint64_t id = 0, id2 = 0;
    static const char *bad_names[] = {"ab", "has space", "äöü", "semi;colon",
                                      "a234567890123456789012345678901234"};

    it_username(user, sizeof(user), "su");
    ASSERT_EQ(signup(user, "password1", &id, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_NE(id, 0);
    ASSERT_EQ(signup(user, "password2", &id2, msg, sizeof(msg)), IM_RPC_ALREADY_EXISTS);
    ASSERT_TRUE(it_starts_with(msg, "username_taken: "));
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        ASSERT_EQ(signup(bad_names[i], "password1", &id2, msg, sizeof(msg)),
                  IM_RPC_INVALID_ARGUMENT);
        ASSERT_TRUE(it_starts_with(msg, "bad_username: "));
    }
    it_username(user, sizeof(user), "pw");
    ASSERT_EQ(signup(user, "short", &id2, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "bad_password: "));
    {
        char long_pw[130];
        memset(long_pw, 'x', 129);
        long_pw[129] = '\0';
        ASSERT_EQ(signup(user, long_pw, &id2, msg, sizeof(msg)), IM_RPC_INVALID_ARGUMENT);
        ASSERT_TRUE(it_starts_with(msg, "bad_password: "));
    }
}

TEST(login_issues_a_token_that_verifies)
{
    char user[40], msg[256];
    Im__V1__LoginResponse *lr = NULL;
    Im__V1__VerifyTokenResponse *vr = NULL;
    im_jwt_claims_t claims;
    uint64_t id = 0;
    int64_t now;

    it_username(user, sizeof(user), "li");
    ASSERT_EQ(signup(user, "correct horse", &id, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_EQ(login(user, "correct horse", &lr, msg, sizeof(msg)), IM_RPC_OK);
    /* After the login: taken before, a second boundary in between made the
     * token's iat lie in "the future" of a zero-leeway check. */
    now = (int64_t)(im_wall_ms() / 1000);
    ASSERT_U64_EQ(lr->user_id, id);
    ASSERT_EQ(im_jwt_verify(SECRET, strlen(SECRET), lr->token, strlen(lr->token), now, 0, &claims),
              IM_OK);
    ASSERT_U64_EQ(claims.sub, id);
    ASSERT_STR_EQ(claims.name, user);
    ASSERT_EQ(claims.exp * 1000, lr->expires_at_ms);
    ASSERT_TRUE(claims.exp >= now + 3600 - 5 && claims.exp <= now + 3600 + 5); /* --token-ttl 1h */

    ASSERT_EQ(verify(lr->token, msg, sizeof(msg), &vr), IM_RPC_OK);
    ASSERT_U64_EQ(vr->user_id, id);
    ASSERT_STR_EQ(vr->username, user);
    protobuf_c_message_free_unpacked(&vr->base, NULL);

    /* Tampered: one character of the payload changed. */
    lr->token[strchr(lr->token, '.') - lr->token + 3] ^= 1;
    ASSERT_EQ(verify(lr->token, msg, sizeof(msg), &vr), IM_RPC_UNAUTHENTICATED);
    ASSERT_TRUE(it_starts_with(msg, "bad_token: "));
    ASSERT_EQ(verify("not.a.token", msg, sizeof(msg), &vr), IM_RPC_UNAUTHENTICATED);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
}

TEST(expired_token_is_rejected_as_expired)
{
    im_jwt_claims_t c = {.sub = 42, .name = "old", .iat = 0, .exp = 0};
    char token[IM_JWT_MAX_LEN + 1], msg[256];
    Im__V1__VerifyTokenResponse *vr = NULL;

    c.iat = (int64_t)(im_wall_ms() / 1000) - 7200;
    c.exp = c.iat + 3600;
    ASSERT_EQ(im_jwt_sign(SECRET, strlen(SECRET), &c, token, sizeof(token)), IM_OK);
    ASSERT_EQ(verify(token, msg, sizeof(msg), &vr), IM_RPC_UNAUTHENTICATED);
    ASSERT_TRUE(it_starts_with(msg, "token_expired: "));
    /* The same claims under another secret are not ours at all. */
    ASSERT_EQ(im_jwt_sign("another-secret", 14, &c, token, sizeof(token)), IM_OK);
    ASSERT_EQ(verify(token, msg, sizeof(msg), &vr), IM_RPC_UNAUTHENTICATED);
    ASSERT_TRUE(it_starts_with(msg, "bad_token: "));
}

TEST(bad_login_is_the_same_for_wrong_password_and_unknown_user)
{
    char user[40], ghost[40], msg[256], msg2[256];
    Im__V1__LoginResponse *lr = NULL;
    uint64_t id;

    it_username(user, sizeof(user), "bl");
    it_username(ghost, sizeof(ghost), "ghost");
    ASSERT_EQ(signup(user, "password1", &id, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_EQ(login(user, "password2", &lr, msg, sizeof(msg)), IM_RPC_UNAUTHENTICATED);
    ASSERT_TRUE(it_starts_with(msg, "bad_credentials: "));
    ASSERT_EQ(login(ghost, "password1", &lr, msg2, sizeof(msg2)), IM_RPC_UNAUTHENTICATED);
    ASSERT_STR_EQ(msg, msg2);
    ASSERT_NULL(lr);
}

/* Usernames are case-insensitive: one account per name, whatever the case. */
TEST(usernames_ignore_case_and_tokens_carry_the_stored_spelling)
{
    char user[40], upper[40], msg[256];
    Im__V1__LoginResponse *lr = NULL;
    im_jwt_claims_t claims;
    uint64_t id = 0, id2 = 0;

    it_username(user, sizeof(user), "case");
    for (size_t i = 0; i <= strlen(user); i++)
        upper[i] = (char)toupper((unsigned char)user[i]);
    ASSERT_EQ(signup(user, "password1", &id, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_EQ(signup(upper, "password1", &id2, msg, sizeof(msg)), IM_RPC_ALREADY_EXISTS);
    ASSERT_EQ(login(upper, "password1", &lr, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_U64_EQ(lr->user_id, id);
    ASSERT_EQ(im_jwt_verify(SECRET, strlen(SECRET), lr->token, strlen(lr->token),
                            (int64_t)(im_wall_ms() / 1000), 0, &claims),
              IM_OK);
    ASSERT_STR_EQ(claims.name, user);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
}

#define PARALLEL 40

static _Atomic unsigned done_calls, ok_calls;
static uint64_t parallel_ids[PARALLEL];

static void parallel_done_cb(void *arg, im_rpc_result_t *res)
{
    if (res->code == IM_RPC_OK) {
        parallel_ids[(uintptr_t)arg] = ((Im__V1__RegisterResponse *)res->resp)->user_id;
        ok_calls++;
    }
    done_calls++;
}

/* More calls at once than the server has workers (and MySQL sessions). */
TEST(parallel_signups_all_succeed_with_distinct_ids)
{
    char names[PARALLEL][40];
    uint64_t t0 = im_mono_ms();

    for (uintptr_t i = 0; i < PARALLEL; i++) {
        Im__V1__RegisterRequest req = IM__V1__REGISTER_REQUEST__INIT;

        it_username(names[i], sizeof(names[i]), "par");
        req.username = names[i];
        req.password = "password1";
        ASSERT_EQ(im_rpc_call(lg.client, &im__v1__auth__descriptor, SIGNUP, &req.base, TIMEOUT_MS,
                              NULL, 0, parallel_done_cb, (void *)i),
                  IM_OK);
    }
    while (done_calls < PARALLEL && im_mono_ms() - t0 < TIMEOUT_MS + 1000)
        it_sleep_ms(5);
    ASSERT_EQ(done_calls, PARALLEL);
    ASSERT_EQ(ok_calls, PARALLEL);
    for (size_t i = 0; i < PARALLEL; i++)
        for (size_t j = i + 1; j < PARALLEL; j++)
            ASSERT_NE(parallel_ids[i], parallel_ids[j]);
}

static Im__V1__GroupResponse *group_call(unsigned method, uint64_t user, uint64_t group,
                                         im_rpc_code_t want, const char *want_prefix)
{
    Im__V1__GroupRequest req = IM__V1__GROUP_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    char msg[256];

    req.user_id = user;
    req.group_id = group;
    ASSERT_EQ(
        it_logic_call(&lg, &im__v1__group__descriptor, method, &req.base, &resp, msg, sizeof(msg)),
        want);
    if (want_prefix != NULL)
        ASSERT_TRUE(it_starts_with(msg, want_prefix));
    return (Im__V1__GroupResponse *)resp;
}

TEST(groups_create_join_members_mine_leave)
{
    Im__V1__CreateGroupRequest creq = IM__V1__CREATE_GROUP_REQUEST__INIT;
    Im__V1__MyGroupsRequest mreq = IM__V1__MY_GROUPS_REQUEST__INIT;
    Im__V1__GroupResponse *gr;
    Im__V1__MembersResponse *mr;
    Im__V1__MyGroupsResponse *mine;
    ProtobufCMessage *resp = NULL;
    char user[40], msg[256];
    uint64_t owner, bob, eve, gid;

    it_username(user, sizeof(user), "own");
    ASSERT_EQ(signup(user, "password1", &owner, msg, sizeof(msg)), IM_RPC_OK);
    it_username(user, sizeof(user), "bob");
    ASSERT_EQ(signup(user, "password1", &bob, msg, sizeof(msg)), IM_RPC_OK);
    it_username(user, sizeof(user), "eve");
    ASSERT_EQ(signup(user, "password1", &eve, msg, sizeof(msg)), IM_RPC_OK);

    creq.user_id = owner;
    creq.name = "";
    ASSERT_EQ(
        it_logic_call(&lg, &im__v1__group__descriptor, CREATE, &creq.base, &resp, msg, sizeof(msg)),
        IM_RPC_INVALID_ARGUMENT);
    ASSERT_TRUE(it_starts_with(msg, "bad_name: "));
    creq.name = "tea room \xe2\x98\x95";
    ASSERT_EQ(
        it_logic_call(&lg, &im__v1__group__descriptor, CREATE, &creq.base, &resp, msg, sizeof(msg)),
        IM_RPC_OK);
    gr = (Im__V1__GroupResponse *)resp;
    gid = gr->group->id;
    ASSERT_NE(gid, 0);
    ASSERT_STR_EQ(gr->group->name, creq.name);
    ASSERT_U64_EQ(gr->group->owner, owner);
    ASSERT_EQ(gr->group->member_count, 1);
    protobuf_c_message_free_unpacked(resp, NULL);

    gr = group_call(JOIN, bob, gid, IM_RPC_OK, NULL);
    ASSERT_EQ(gr->group->member_count, 2);
    protobuf_c_message_free_unpacked(&gr->base, NULL);
    gr = group_call(JOIN, bob, gid, IM_RPC_OK, NULL); /* idempotent */
    ASSERT_EQ(gr->group->member_count, 2);
    protobuf_c_message_free_unpacked(&gr->base, NULL);
    group_call(JOIN, bob, gid + 1, IM_RPC_NOT_FOUND, "unknown_group: ");

    mr = (Im__V1__MembersResponse *)group_call(MEMBERS, bob, gid, IM_RPC_OK, NULL);
    ASSERT_EQ(mr->n_user_ids, 2);
    ASSERT_TRUE((mr->user_ids[0] == owner && mr->user_ids[1] == bob) ||
                (mr->user_ids[0] == bob && mr->user_ids[1] == owner));
    protobuf_c_message_free_unpacked(&mr->base, NULL);
    group_call(MEMBERS, eve, gid, IM_RPC_PERMISSION_DENIED, "not_member: ");
    group_call(MEMBERS, eve, gid + 1, IM_RPC_NOT_FOUND, "unknown_group: ");

    mreq.user_id = bob;
    ASSERT_EQ(
        it_logic_call(&lg, &im__v1__group__descriptor, MINE, &mreq.base, &resp, msg, sizeof(msg)),
        IM_RPC_OK);
    mine = (Im__V1__MyGroupsResponse *)resp;
    ASSERT_EQ(mine->n_groups, 1);
    ASSERT_U64_EQ(mine->groups[0]->id, gid);
    ASSERT_STR_EQ(mine->groups[0]->name, creq.name);
    ASSERT_EQ(mine->groups[0]->member_count, 2);
    protobuf_c_message_free_unpacked(resp, NULL);

    group_call(LEAVE, owner, gid, IM_RPC_FAILED_PRECONDITION, "owner_cannot_leave: ");
    gr = group_call(LEAVE, bob, gid, IM_RPC_OK, NULL);
    ASSERT_EQ(gr->group->member_count, 1);
    protobuf_c_message_free_unpacked(&gr->base, NULL);
    group_call(MEMBERS, bob, gid, IM_RPC_PERMISSION_DENIED, "not_member: ");
    mreq.user_id = bob;
    ASSERT_EQ(
        it_logic_call(&lg, &im__v1__group__descriptor, MINE, &mreq.base, &resp, msg, sizeof(msg)),
        IM_RPC_OK);
    ASSERT_EQ(((Im__V1__MyGroupsResponse *)resp)->n_groups, 0);
    protobuf_c_message_free_unpacked(resp, NULL);
}

/* Ten wrong passwords for one name: the eleventh attempt is refused before
 * the password is checked, the right one included; other users are not
 * affected. */
TEST(login_brute_force_is_limited_per_username)
{
    Im__V1__LoginResponse *lr = NULL;
    char user[40], other[40], msg[256];
    uint64_t id;

    it_username(user, sizeof(user), "brute");
    it_username(other, sizeof(other), "calm");
    ASSERT_EQ(signup(user, "password1", &id, msg, sizeof(msg)), IM_RPC_OK);
    ASSERT_EQ(signup(other, "password1", &id, msg, sizeof(msg)), IM_RPC_OK);
    for (int i = 0; i < 10; i++)
        ASSERT_EQ(login(user, "wrong-password", &lr, msg, sizeof(msg)), IM_RPC_UNAUTHENTICATED);
    ASSERT_EQ(login(user, "password1", &lr, msg, sizeof(msg)), IM_RPC_RESOURCE_EXHAUSTED);
    ASSERT_TRUE(it_starts_with(msg, "too_many_attempts: "));
    /* The name's case does not get around it. */
    for (char *p = user; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    ASSERT_EQ(login(user, "password1", &lr, msg, sizeof(msg)), IM_RPC_RESOURCE_EXHAUSTED);
    ASSERT_EQ(login(other, "password1", &lr, msg, sizeof(msg)), IM_RPC_OK);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
}

static void cleanup(void)
{
    it_logic_kill(&lg);
}

int main(int argc, char **argv)
{
    static const char *const extra[] = {"--token-ttl", "1h", NULL};

    if (argc < 2) {
        fprintf(stderr, "usage: %s <logic binary>\n", argv[0]);
        return 2;
    }
    logic_bin = lg.bin = argv[1];
    if (it_env_load() != IM_OK)
        return 1;
    atexit(cleanup);
    snprintf(log_path, sizeof(log_path), "/tmp/it08-nosecret.%d.log", (int)getpid());
    RUN(no_secret_without_dev_refuses_to_start);
    unlink(log_path);

    if (!it_logic_start(&lg, extra))
        return 1;
    RUN(signup_validates_and_rejects_duplicates);
    RUN(login_issues_a_token_that_verifies);
    RUN(expired_token_is_rejected_as_expired);
    RUN(bad_login_is_the_same_for_wrong_password_and_unknown_user);
    RUN(groups_create_join_members_mine_leave);
    RUN(usernames_ignore_case_and_tokens_carry_the_stored_spelling);
    RUN(parallel_signups_all_succeed_with_distinct_ids);
    RUN(login_brute_force_is_limited_per_username);
    if (!it_logic_stop_checked(&lg))
        return 1;
    return it_test_done_log(&lg);
}

//! Diesel's view of the tables in `migrations/`.

diesel::table! {
    inbox (update_id) {
        update_id -> BigInt,
        chat_id -> Nullable<BigInt>,
        body -> Text,
        received_at -> BigInt,
        done_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    users (user_id) {
        user_id -> BigInt,
        chat_id -> BigInt,
        username -> Nullable<Text>,
        first_name -> Nullable<Text>,
        language -> Nullable<Text>,
        first_seen -> BigInt,
        last_seen -> BigInt,
        messages -> BigInt,
        ai_questions -> BigInt,
        reports -> BigInt,
        state -> Text,
    }
}

diesel::table! {
    ai_turns (user_id, seq) {
        user_id -> BigInt,
        seq -> BigInt,
        question -> Text,
        answer -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    jobs (id) {
        id -> BigInt,
        kind -> Text,
        user_id -> BigInt,
        chat_id -> BigInt,
        priority -> Integer,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        created_at -> BigInt,
        updated_at -> BigInt,
        error -> Nullable<Text>,
        claimed_by -> Nullable<Text>,
        lease_until -> Nullable<BigInt>,
    }
}

diesel::table! {
    dead_letters (update_id) {
        update_id -> BigInt,
        chat_id -> Nullable<BigInt>,
        body -> Text,
        error -> Text,
        attempts -> Integer,
        created_at -> BigInt,
    }
}
